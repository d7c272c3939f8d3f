"""palijudge: fine-tune PaliGemma into a yes/no judge for images."""

__version__ = "0.1.0"
