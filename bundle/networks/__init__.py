"""Networks of the CM-CGNS bundle: image and text encoders, pooling, cross-modal attention, the CM-MIR decoder and
the CM-CGNS model (bundle/networks/cmcgns.py)."""
