"""Storage: Redis (embedded or external), the compact user store, and the all_users.json view of it."""
