"""Retrieval indexes (FAISS, inner product) built from embedding snapshots.

``faiss_index``: building, tuning, recall measurement and (de)serialisation of one index;
``retrieval``: index snapshots (export from the LATEST embeddings, load, query by user key).
"""
