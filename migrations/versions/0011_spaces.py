"""chat spaces: a room's topic, emoji, archive time and versioned guidelines; each member's accepted version

Revision ID: 0011
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0011'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('topic', sa.String(500), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('emoji', chat.db.ExactString(32), nullable=True))
        batch_op.add_column(sa.Column('archived_at', chat.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('guidelines', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('guidelines_version', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('conversation_states', schema=None) as batch_op:
        # server default: the writer's read-position upsert names its columns (chat/storage.py)
        batch_op.add_column(sa.Column('accepted_guidelines_version', sa.Integer(), nullable=False,
                                      server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('conversation_states', schema=None) as batch_op:
        batch_op.drop_column('accepted_guidelines_version')
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_column('guidelines_version')
        batch_op.drop_column('guidelines')
        batch_op.drop_column('archived_at')
        batch_op.drop_column('emoji')
        batch_op.drop_column('topic')
