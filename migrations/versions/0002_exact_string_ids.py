"""ids, client_msg_ids, tokens and keys compare byte for byte on MariaDB

MariaDB's default collation (utf8mb4_unicode_ci / general_ci) compares "Ann" and "ann" as
equal, so two users whose ids differ only in case (SPEC §2 allows [A-Za-z0-9_-]) shared one
users row, memberships, conversations and messages. SQLite compares bytes: nothing to do there.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# (table, column, length, nullable)
COLUMNS = [
    ('users', 'id', 64, False),
    ('memberships', 'creator_id', 64, False),
    ('memberships', 'patron_id', 64, False),
    ('conversations', 'creator_id', 64, False),
    ('conversations', 'patron_id', 64, True),
    ('conversations', 'direct_key', 140, True),
    ('conversation_states', 'user_id', 64, False),
    ('messages', 'sender_id', 64, False),
    ('messages', 'client_msg_id', 64, False),
    ('devices', 'token', 512, False),
    ('devices', 'user_id', 64, False),
    ('notifications', 'user_id', 64, False),
    ('notification_requests', 'idempotency_key', 200, False),
    ('push_outbox', 'user_id', 64, False),
    ('push_outbox', 'device_token', 512, False),
]


def _modify(collation: str) -> None:
    if op.get_bind().dialect.name not in ('mysql', 'mariadb'):
        return
    by_table: dict[str, list[str]] = {}
    for table, column, length, nullable in COLUMNS:
        by_table.setdefault(table, []).append(
            f"MODIFY `{column}` VARCHAR({length}) CHARACTER SET utf8mb4 COLLATE {collation}"
            f"{'' if nullable else ' NOT NULL'}")
    for table, changes in by_table.items():
        op.execute(f"ALTER TABLE `{table}` {', '.join(changes)}")


def upgrade() -> None:
    _modify('utf8mb4_bin')


def downgrade() -> None:
    _modify('utf8mb4_unicode_ci')
