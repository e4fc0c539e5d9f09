"""An SMTP server for the tests: aiosmtpd (the maintained successor of the standard library's
`smtpd`, which Python 3.12 removed), accepting every mail and writing each one as a JSON file
into a directory, in the order received.

    python3 tests/support/smtp_sink.py PORT DIR

Prints "ready" once it listens. Each mail: DIR/NNNNNN.json with the envelope (`mail_from`,
`rcpt_tos`), the headers the tests read and the decoded text; the raw message beside it as
NNNNNN.eml. Files appear whole (written, then renamed). Runs on Python 3.11 to 3.13."""

import asyncio
import email
import email.policy
import json
import os
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = len([n for n in os.listdir(directory) if n.endswith(".json")])

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        name = os.path.join(self.directory, f"{self.count:06d}")
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode()
        message = email.message_from_bytes(data, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
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
        return "250 OK"


async def serve(port, directory):
    sink = Sink(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, decode_data=False, hostname="sink.test"), "127.0.0.1", port
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    asyncio.run(serve(port, directory))


if __name__ == "__main__":
    main()
