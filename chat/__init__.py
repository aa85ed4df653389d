"""Backstage chat: Socket.IO + HTTP transport, chat domain and storage."""
