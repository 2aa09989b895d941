"""Data: report parsing and sentences (reports), tokenisation (tokenization), radiograph reading and transforms
(image_io), manifests (manifest), the demo dataset (demo_classes, phantom, demo_dataset) and the real-dataset
preparation (prepare/)."""
