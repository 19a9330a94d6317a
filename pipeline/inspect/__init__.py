"""Looking inside the network: feature maps, Grad-CAM and a 2-D map of the cached features."""
