"""threads: a reply's root (messages.thread_id) and the root's thread summary (reply_count,
last_reply_at, thread_participants), one index for thread pages and the main view without replies

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('thread_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                      nullable=True))
        batch_op.add_column(sa.Column('reply_count', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('last_reply_at', chat.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('thread_participants', sa.String(400), nullable=True))
        batch_op.create_index('ix_messages_conversation_id_thread_id_seq', ['conversation_id', 'thread_id', 'seq'])


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_conversation_id_thread_id_seq')
        batch_op.drop_column('thread_participants')
        batch_op.drop_column('last_reply_at')
        batch_op.drop_column('reply_count')
        batch_op.drop_column('thread_id')
