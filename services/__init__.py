"""The domain of bellcast and its I/O: notifications, observers, the delivery cache, the stores."""
