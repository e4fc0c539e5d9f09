-- From this version on, the link secrets of mails in the outbox and the private halves of the
-- signing keys are sealed with ChaCha20-Poly1305 (61 bytes: a key id, a nonce, the ciphertext,
-- the tag); the 64-byte seals of earlier versions (an HMAC pad and tag) still open.
--
-- Earlier versions cannot open the new seals, and their mail worker abandons a mail it cannot
-- open. So that no mail is lost while instances of both run (a rolling upgrade), a mail written
-- by this version is hidden from theirs: its `next_attempt_at`, the only column their workers
-- look for due mail in, is 'infinity', and it is due at `due_at`, which only this version
-- reads. Mail written by earlier versions (`due_at` NULL) is delivered by either, as before.
-- (An earlier version that cannot open a signing key treats it as another secret's: it makes a
-- key of its own, which this version opens; both are published, nothing is refused.)
ALTER TABLE sentinel_outbox ADD COLUMN IF NOT EXISTS due_at timestamp with time zone;

CREATE INDEX IF NOT EXISTS sentinel_outbox_due_either
    ON sentinel_outbox ((COALESCE(due_at, next_attempt_at)))
    WHERE sent_at IS NULL AND abandoned_at IS NULL;
