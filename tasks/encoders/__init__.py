"""Pretrained encoders behind one small interface: CLIP and CLAP for media
(media_encoders), MiniLM and CLIP text towers for class descriptions (text_encoders).

May import: tasks.store; nothing else of tasks/.
"""
