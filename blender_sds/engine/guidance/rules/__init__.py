"""Rules: how noise predictions become a gradient on the render (SDS today; its successors join here)."""
