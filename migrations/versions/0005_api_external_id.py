"""rooms: the platform's own id (`external_id`), unique per creator, for idempotent creation

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_id', chat.db.ExactString(128), nullable=True))
        # NULLs never collide (MariaDB and SQLite alike): rooms made without an external_id
        # and direct conversations are not constrained.
        batch_op.create_unique_constraint('uq_conversations_creator_id_external_id', ['creator_id', 'external_id'])


def downgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_constraint('uq_conversations_creator_id_external_id', type_='unique')
        batch_op.drop_column('external_id')
