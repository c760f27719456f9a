"""Closed-form teachers: the reference views and the pocket world, whose exact scores make quality measurable."""
