"""unused uploads removed after UPLOAD_TTL_S: blob_deletions (blobs to remove from the store) and
an index of unused attachments by age

Revision ID: 0013
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0013'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blob_deletions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('blob_key', chat.db.ExactString(64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', chat.db.UTCDateTime(), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', chat.db.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', chat.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blob_deletions'))
    )
    op.create_index('ix_blob_deletions_status_next_attempt_at', 'blob_deletions', ['status', 'next_attempt_at'],
                    unique=False)
    op.create_index('ix_attachments_unused', 'attachments', ['client_msg_id', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_attachments_unused', table_name='attachments')
    op.drop_index('ix_blob_deletions_status_next_attempt_at', table_name='blob_deletions')
    op.drop_table('blob_deletions')
