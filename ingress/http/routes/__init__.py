"""The API's routers, one module per resource; the seed systems' paths are in
seed_aliases, registered on the same endpoints."""
