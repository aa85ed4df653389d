"""push fan-out jobs: one row per message/notification audience, expanded by the push worker

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('push_jobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('conversation_id', sa.BigInteger(), nullable=True),
    sa.Column('message_id', sa.BigInteger(), nullable=True),
    sa.Column('sender_id', sa.String(length=64), nullable=True),
    sa.Column('audience', sa.Text(), nullable=True),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('resume_after', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('pushes', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', chat.db.UTCDateTime(), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', chat.db.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', chat.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_push_jobs'))
    )
    with op.batch_alter_table('push_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_push_jobs_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('push_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_push_jobs_status_next_attempt_at')
    op.drop_table('push_jobs')
