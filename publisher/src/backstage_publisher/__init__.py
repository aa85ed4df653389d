"""Publish live events and notifications to a Backstage chat server from a Python backend.

    from backstage_publisher import Publisher, PublishError

    with Publisher("https://chat.example.com", api_key="...") as pub:
        pub.publish("creator:42", "post_published", {"post_id": "9001"})       # -> delivered_to
        pub.notify(channel="creator:42", type="post_published", title="New post",
                   body="Episode 12 is out", data={"post_id": "9001"}, push=True)  # -> notification ids

`AsyncPublisher` has the same methods as coroutines. Both need httpx only. `RedisPublisher`
(the direct mode for trusted code inside the cluster) needs the `redis` extra.
`verify_webhook(secret, headers, body)` checks a webhook request Backstage sent to your backend
(docs/webhooks.md). See README.md.
"""

from __future__ import annotations

from backstage_publisher._http import AsyncPublisher, Publisher, PublishError
from backstage_publisher._redis import RedisPublisher
from backstage_publisher._webhooks import WebhookVerificationError, verify_webhook

__version__ = "1.0.0"
__all__ = ["AsyncPublisher", "PublishError", "Publisher", "RedisPublisher", "WebhookVerificationError", "__version__",
           "verify_webhook"]
