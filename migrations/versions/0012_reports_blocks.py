"""reports of messages (message_reports, hidden_messages, report_settings) and blocks between members (member_blocks)

Revision ID: 0012
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0012'
down_revision = '0009'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'message_reports',
        sa.Column('id', _ID, autoincrement=True, nullable=False),
        sa.Column('message_id', _ID, nullable=False),
        sa.Column('conversation_id', _ID, nullable=False),
        sa.Column('creator_id', chat.db.ExactString(64), nullable=False),
        sa.Column('sender_id', chat.db.ExactString(64), nullable=False),
        sa.Column('reporter_id', chat.db.ExactString(64), nullable=False),
        sa.Column('reason', sa.String(16), nullable=False),
        sa.Column('note', sa.String(500), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('resolved_by', chat.db.ExactString(64), nullable=True),
        sa.Column('resolved_at', chat.db.UTCDateTime(), nullable=True),
        sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'],
                                name=op.f('fk_message_reports_message_id_messages'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'],
                                name=op.f('fk_message_reports_conversation_id_conversations'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_message_reports')),
        sa.UniqueConstraint('message_id', 'reporter_id', name=op.f('uq_message_reports_message_id_reporter_id')),
    )
    op.create_index('ix_message_reports_creator_status_id', 'message_reports', ['creator_id', 'status', 'id'])
    op.create_table(
        'hidden_messages',
        sa.Column('message_id', _ID, nullable=False),
        sa.Column('conversation_id', _ID, nullable=False),
        sa.Column('hidden_at', chat.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'],
                                name=op.f('fk_hidden_messages_message_id_messages'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'],
                                name=op.f('fk_hidden_messages_conversation_id_conversations'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('message_id', name=op.f('pk_hidden_messages')),
    )
    op.create_index('ix_hidden_messages_conversation_id', 'hidden_messages', ['conversation_id'])
    op.create_table(
        'report_settings',
        sa.Column('creator_id', chat.db.ExactString(64), nullable=False),
        sa.Column('hide_threshold', sa.Integer(), nullable=False),
        sa.Column('updated_at', chat.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('creator_id', name=op.f('pk_report_settings')),
    )
    op.create_table(
        'member_blocks',
        sa.Column('blocker_id', chat.db.ExactString(64), nullable=False),
        sa.Column('blocked_id', chat.db.ExactString(64), nullable=False),
        sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('blocker_id', 'blocked_id', name=op.f('pk_member_blocks')),
    )
    op.create_index('ix_member_blocks_blocked_id', 'member_blocks', ['blocked_id'])


def downgrade() -> None:
    op.drop_index('ix_member_blocks_blocked_id', table_name='member_blocks')
    op.drop_table('member_blocks')
    op.drop_table('report_settings')
    op.drop_index('ix_hidden_messages_conversation_id', table_name='hidden_messages')
    op.drop_table('hidden_messages')
    op.drop_index('ix_message_reports_creator_status_id', table_name='message_reports')
    op.drop_table('message_reports')
