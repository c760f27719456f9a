"""The scene being optimised and how it is seen: field, hash grid, cameras, renderer, occupancy, isosurface, colour."""
