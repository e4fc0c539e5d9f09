"""An SMTP server for the tests: Python's own (the standard library's `smtpd`), which accepts
every mail and writes each one as a JSON file into a directory, in the order received.

    python3 tests/support/smtp_sink.py PORT DIR

Prints "ready" once it listens. Each mail: DIR/NNNNNN.json with the envelope (`mail_from`,
`rcpt_tos`), the headers the tests read and the decoded text; the raw message beside it as
NNNNNN.eml. Files appear whole (written, then renamed)."""

import email
import email.policy
import json
import os
import sys
import warnings

# Deprecated, still in Python 3.11: a real SMTP implementation without installing anything.
warnings.simplefilter("ignore", DeprecationWarning)
import asyncore  # noqa: E402
import smtpd  # noqa: E402


class Sink(smtpd.SMTPServer):
    def __init__(self, port, directory):
        super().__init__(("127.0.0.1", port), None, decode_data=False)
        self.directory = directory
        self.count = len([n for n in os.listdir(directory) if n.endswith(".json")])

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.count += 1
        name = os.path.join(self.directory, f"{self.count:06d}")
        message = email.message_from_bytes(data, policy=email.policy.default)
        record = {
            "mail_from": mailfrom,
            "rcpt_tos": rcpttos,
            "from": str(message.get("From", "")),
            "to": str(message.get("To", "")),
            "subject": str(message.get("Subject", "")),
            "message_id": str(message.get("Message-ID", "")),
            "content_type": str(message.get("Content-Type", "")),
            "text": message.get_content() if not message.is_multipart() else "",
        }
        with open(name + ".eml.tmp", "wb") as f:
            f.write(data)
        os.rename(name + ".eml.tmp", name + ".eml")
        with open(name + ".json.tmp", "w") as f:
            json.dump(record, f)
        os.rename(name + ".json.tmp", name + ".json")


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    Sink(port, directory)
    print("ready", flush=True)
    asyncore.loop()


if __name__ == "__main__":
    main()
