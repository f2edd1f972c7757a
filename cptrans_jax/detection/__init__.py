"""Detection score of translated frames: a YOLO ONNX detector, YOLO labels and COCO AP.

* :mod:`.yolo` — the detector (onnxruntime; letterbox, output layouts, NMS by OpenCV);
* :mod:`.labels` — YOLO txt ground truth and frame ↔ label matching;
* :mod:`.average_precision` — AP per class at one IoU threshold by pycocotools.

These need the ``detect`` extra (``pip install 'cptrans-jax[detect]'``); the command is
``python -m cptrans_jax.detect_score``.
"""
