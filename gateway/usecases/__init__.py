"""The gateway's use cases, one module each, combined into `gateway.service.Gateway`.

Each use case runs in one store transaction: its state change and the message it causes commit together
(the transactional outbox). Decisions come from `gateway.domain`; these modules order reads and writes.
"""
