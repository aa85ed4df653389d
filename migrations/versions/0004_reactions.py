"""reactions: one row per (message, user, emoji), counted, never a stored count

`emoji` and `user_id` compare byte for byte on MariaDB (utf8mb4_bin, as 0002 did for ids):
under the default collation distinct emoji (skin tones, ZWJ sequences) compare equal and
would collide on the primary key.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reactions',
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', chat.db.ExactString(64), nullable=False),
    sa.Column('emoji', chat.db.ExactString(32), nullable=False),
    sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_reactions_message_id_messages'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id', 'user_id', 'emoji', name=op.f('pk_reactions'))
    )
    with op.batch_alter_table('reactions', schema=None) as batch_op:
        batch_op.create_index('ix_reactions_message_id_emoji', ['message_id', 'emoji'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reactions', schema=None) as batch_op:
        batch_op.drop_index('ix_reactions_message_id_emoji')
    op.drop_table('reactions')
