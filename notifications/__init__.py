"""Backstage notifications: feed, devices, push outbox and the FCM worker."""
