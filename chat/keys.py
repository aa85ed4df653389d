"""Every name used for Socket.IO rooms, channels and Redis keys, in one place."""

from __future__ import annotations

import re

CHANNEL_RE = re.compile(r"^(user|creator|room):([A-Za-z0-9_-]{1,64})\Z")


def conversation_room(conversation_id: str) -> str:
    """The Socket.IO room of the sockets that joined a conversation."""
    return f"conv:{conversation_id}"


def channel_room(channel: str) -> str:
    """The Socket.IO room of the sockets subscribed to a channel (SPEC §4 channels)."""
    return f"ch:{channel}"


def user_channel(user_id: str) -> str:
    return f"user:{user_id}"


def creator_channel(creator_id: str) -> str:
    return f"creator:{creator_id}"


def room_channel(conversation_id: str) -> str:
    return f"room:{conversation_id}"


class RedisKeys:
    """Redis keys and pub/sub channels of one deployment, all under REDIS_PREFIX."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @property
    def socketio_channel(self) -> str:
        """python-socketio's AsyncRedisManager pub/sub channel."""
        return f"{self.prefix}:socketio"

    def room_relay_channel(self, room: str) -> str:
        """Broadcasts to one Socket.IO room (a conversation), read only by processes with
        local members in it (chat/relay.py)."""
        return f"{self.prefix}:relay:{room}"

    @property
    def control_channel(self) -> str:
        """Our own cluster control messages (revocations)."""
        return f"{self.prefix}:control"

    @property
    def push_wakeup_channel(self) -> str:
        """Published after a commit that wrote push outbox rows."""
        return f"{self.prefix}:push-wakeup"

    # --- presence (chat/presence.py) ---
    @property
    def servers(self) -> str:
        """ZSET server_id -> last heartbeat (unix seconds)."""
        return f"{self.prefix}:servers"

    def server_users(self, server_id: str) -> str:
        """HASH user_id -> number of sockets this server holds for the user."""
        return f"{self.prefix}:srv:{server_id}:users"

    def server_conversations(self, server_id: str) -> str:
        """SET of conversation ids this server has joined sockets in."""
        return f"{self.prefix}:srv:{server_id}:convs"

    def server_conversation_users(self, server_id: str, conversation_id: str) -> str:
        """HASH user_id -> sockets of the user joined to the conversation on this server."""
        return f"{self.prefix}:srv:{server_id}:conv:{conversation_id}"

    def server_channels(self, server_id: str) -> str:
        """HASH channel -> sockets subscribed on this server."""
        return f"{self.prefix}:srv:{server_id}:chans"

    def slow_mode(self, conversation_id: int, user_id: str) -> str:
        """A member's slow-mode slot in a room (chat/slowmode.py): set NX with the interval as TTL."""
        return f"{self.prefix}:slow:{conversation_id}:{user_id}"

    def emit_slot(self, item: str) -> str:
        """Who may send the next coalesced event of an item ("root:42", "reaction:42";
        chat/emitslots.py): set NX with a TTL of (about) the window."""
        return f"{self.prefix}:emit:{item}"

    def emit_versions(self, item: str) -> str:
        """HASH of an item's coalesced events: v = changes counted, e = highest change sent."""
        return f"{self.prefix}:emitv:{item}"

    def typing_throttle(self, conversation_id: str, user_id: str) -> str:
        return f"{self.prefix}:typing:{conversation_id}:{user_id}"
