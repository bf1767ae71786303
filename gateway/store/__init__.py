"""Storage: one interface (`gateway.store.base.Store`), an SQLite implementation and versioned migrations."""
