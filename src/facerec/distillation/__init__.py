"""Teacher-student training (issue #18): a student network learns from a teacher's embeddings of the training
images, alongside (or, for unlabelled photos, instead of) its own margin loss.

`protocol.py` says what a teacher is; `teachers.py` builds one from `--teacher` (a facerec model file, via
`onnx_teacher.py` a foreign ONNX model, via `dlib_teacher.py` dlib's descriptor); `cache.py` keeps its embeddings
on disk; `losses.py` holds the distillation losses; `data.py` the rule that only training images are used;
`online.py` the teacher that embeds the student's augmented batch; `run.py` the run. `facerec.distill` and
`facerec distill` call `run.distill`. (The package is not named `distill`, which would shadow that function.)
"""
