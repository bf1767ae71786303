"""Pure domain logic: blocks, transfers, ledger arithmetic. No I/O, no grpc or aiohttp imports."""
