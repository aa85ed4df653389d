"""photos: uploaded attachments, claimed by a message on send

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _exact(length: int) -> sa.types.TypeEngine[str]:
    return chat.db.ExactString(length)


def upgrade() -> None:
    op.create_table('attachments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('owner_id', _exact(64), nullable=False),
    sa.Column('conversation_id', sa.BigInteger(), nullable=True),
    sa.Column('client_msg_id', _exact(64), nullable=True),
    sa.Column('position', sa.SmallInteger(), nullable=False),
    sa.Column('content_type', sa.String(length=32), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('blob_key', _exact(64), nullable=False),
    sa.Column('thumb_content_type', sa.String(length=32), nullable=False),
    sa.Column('thumb_width', sa.Integer(), nullable=False),
    sa.Column('thumb_height', sa.Integer(), nullable=False),
    sa.Column('thumb_key', _exact(64), nullable=False),
    sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attachments'))
    )
    op.create_index('ix_attachments_owner_message', 'attachments', ['owner_id', 'client_msg_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_attachments_owner_message', table_name='attachments')
    op.drop_table('attachments')
