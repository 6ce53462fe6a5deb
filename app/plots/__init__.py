"""pyqtgraph views: live curves, the per-layer heatmap, benchmark bars."""
