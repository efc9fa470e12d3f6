"""pld.distiller: the offline half (teacher backends, extraction, clustering, consolidation,
the conflict loop, bundle writing). Not built yet: see the distiller issue."""

__all__: list[str] = []
