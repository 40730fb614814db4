"""Pretrained encoders: the exported format, load_encoder (run folders, exports, released names, foreign
nets), and encoders taken out of run folders."""
