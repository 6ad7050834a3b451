"""What goes in and what comes out: image decoding and preprocessing, detections, drawing."""
