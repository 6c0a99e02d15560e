"""tunesmith board: launch, watch, compare and try fine-tunes in a browser (see board/app.py)."""
