"""mentions: the users a message mentions (messages.mentions, for the wire) and one row per
(mentioned user, message) in message_mentions, for unread mention counts

Revision ID: 0010
Revises: 0011 (merged main: threads 0009, reports 0012; written against 0008)
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0010'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: no mentions (every message before this revision, and most after it): no backfill.
    op.add_column('messages', sa.Column('mentions', sa.Text(), nullable=True))
    op.create_table('message_mentions',
    sa.Column('user_id', chat.db.ExactString(64), nullable=False),
    sa.Column('conversation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'],
                            name=op.f('fk_message_mentions_conversation_id_conversations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'conversation_id', 'seq', name=op.f('pk_message_mentions'))
    )


def downgrade() -> None:
    op.drop_table('message_mentions')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('mentions')
