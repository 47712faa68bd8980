"""``make bench``: measurements of SPEC §11, printed as one JSON document (``python -m bench``)."""
