"""HTTP edge (aiohttp): the partner exchange in JSON, the published trust document, health and metrics."""
