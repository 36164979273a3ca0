"""Output checks on images and sampled video frames: NSFW detection and hash matching."""
