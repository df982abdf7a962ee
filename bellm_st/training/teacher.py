"""The teacher of a distillation run and its vectors, computed once and kept on disk.

A teacher (all-MiniLM-L6-v2, or any sentence-transformers or BeLLM model) is frozen, so what it
says of a text never changes: :class:`TeacherVectors` encodes each text of the run once, with a
progress bar, and stores the vectors in a cache folder keyed by the teacher's fingerprint (its
weights and settings) and by each text's hash. Every step, every epoch and every later run
(a resume, another recipe on the same data) reads them back instead of running the teacher. On a
2-core CPU that is what makes distilling on a pool of 100k+ texts feasible at all: the teacher's
pass over the pool takes minutes, the student's training hours.

Layout of a cache folder: ``teacher.json`` (teacher name, fingerprint, vector size) and one
``vectors-NNNN.safetensors`` file per computation (``keys``: 20-byte SHA-1 of each text, ``vectors``:
fp16). Each file is written under a temporary name and renamed into place, so a run stopped mid-way
leaves the cache as it was. The teacher sees each text as itself: a BeLLM teacher applies its own
template, never the student's query/document prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sentence_transformers import SentenceTransformer

from bellm_st.model import bellm_encoder

logger = logging.getLogger(__name__)

TEACHER_FILE = "teacher.json"
TEACHER_BATCH_SIZE = 64


def load_teacher(name_or_path: str | None, device: str) -> SentenceTransformer:
    """The frozen teacher: a shipped model, a saved folder, a baseline shortcut (``minilm``) or, for None,
    the shipped default model. A model that cannot load fails here, in one line, before anything is written."""
    from bellm_st.api import load

    try:
        teacher = load(name_or_path, device=device)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"distill_teacher={name_or_path!r} cannot be loaded ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
            "give a shipped model, a baseline shortcut such as 'minilm', or a saved sentence-transformers folder"
        ) from None
    if (encoder := bellm_encoder(teacher)) is not None:
        encoder.merge_adapter()
    return teacher.eval().requires_grad_(False)


def teacher_fingerprint(teacher: SentenceTransformer) -> str:
    """A short hash of what decides the teacher's vectors: its modules' settings and every weight."""
    digest = hashlib.sha256(repr(teacher).encode("utf-8"))
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


def default_cache_folder(fingerprint: str) -> Path:
    """Where a teacher's vectors live unless the recipe names a folder: beside the converted bases."""
    from bellm_st.bases import cache_root

    return cache_root() / "teachers" / fingerprint


class TeacherVectors:
    """A teacher's vectors for the texts of a run, read from and added to its cache folder.

    Args:
        teacher: the frozen teacher (:func:`load_teacher`).
        name: how the recipe names it (recorded in ``teacher.json``, shown in errors).
        folder: the cache folder; None: :func:`default_cache_folder` of the teacher's fingerprint.
            A folder holding another teacher's vectors is refused.
    """

    def __init__(self, teacher: SentenceTransformer, name: str, folder: str | os.PathLike | None = None):
        self.teacher = teacher
        self.name = name
        self.fingerprint = teacher_fingerprint(teacher)
        self.dimension = teacher.get_embedding_dimension()
        self.folder = Path(folder) if folder is not None else default_cache_folder(self.fingerprint)
        self.rows: dict[bytes, int] = {}
        self.vectors = np.zeros((0, self.dimension), dtype=np.float16)
        self.computed = 0  # texts this object had the teacher encode (the rest came from disk)
        self._check_folder()
        self._read()

    def _check_folder(self) -> None:
        record = self.folder / TEACHER_FILE
        if not record.is_file():
            return
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
            fingerprint, dimension = saved["fingerprint"], saved["dimension"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{record} is not a teacher cache record; delete the folder {self.folder} or give another distill_cache") from None
        if fingerprint != self.fingerprint or dimension != self.dimension:
            raise ValueError(
                f"{self.folder} holds the vectors of another teacher ({saved.get('teacher')!r}, fingerprint {fingerprint}, "
                f"{dimension}-d), not of {self.name!r} (fingerprint {self.fingerprint}, {self.dimension}-d); "
                "give another distill_cache folder, or leave it out to use the teacher's own"
            )

    def _read(self) -> None:
        parts = []
        for shard in sorted(self.folder.glob("vectors-*.safetensors")):
            tensors = load_file(str(shard))
            parts.append((tensors["keys"], tensors["vectors"]))
        if parts:
            self.vectors = np.concatenate([vectors for _, vectors in parts])
            keys = np.concatenate([keys for keys, _ in parts])
            self.rows = {key.tobytes(): row for row, key in enumerate(keys)}

    def __len__(self) -> int:
        return len(self.rows)

    def missing(self, texts: Iterable[str]) -> list[str]:
        """The texts (deduplicated, in order) the cache has no vector for yet."""
        seen: set[bytes] = set()
        found = []
        for text in texts:
            key = text_key(text)
            if key not in self.rows and key not in seen:
                seen.add(key)
                found.append(text)
        return found

    def ensure(self, texts: Iterable[str], batch_size: int = TEACHER_BATCH_SIZE) -> int:
        """Have the teacher encode every text not cached yet (with a progress bar) and store the vectors;
        returns how many it encoded (0 when the cache already holds them all)."""
        todo = self.missing(texts)
        if not todo:
            return 0
        logger.info("teacher %s: encoding %d new text(s) into %s", self.name, len(todo), self.folder)
        order = np.argsort([-len(text) for text in todo], kind="stable")  # long texts first: an out-of-memory shows at once
        vectors = self.teacher.encode(
            [todo[i] for i in order], batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True
        )
        encoded = np.empty_like(vectors)
        encoded[order] = vectors
        keys = np.frombuffer(b"".join(text_key(text) for text in todo), dtype=np.uint8).reshape(len(todo), 20)
        self._write(keys, encoded.astype(np.float16))
        start = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, encoded.astype(np.float16)])
        self.rows.update({key.tobytes(): start + row for row, key in enumerate(keys)})
        self.computed += len(todo)
        return len(todo)

    def _write(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = self.folder / TEACHER_FILE
        if not record.exists():
            record.write_text(
                json.dumps({"teacher": self.name, "fingerprint": self.fingerprint, "dimension": self.dimension}, indent=2) + "\n",
                encoding="utf-8",
            )
        index = len(list(self.folder.glob("vectors-*.safetensors")))
        while (self.folder / f"vectors-{index:04d}.safetensors").exists():
            index += 1
        target = self.folder / f"vectors-{index:04d}.safetensors"
        temporary = target.with_suffix(f".tmp{os.getpid()}")
        save_file({"keys": keys, "vectors": vectors}, str(temporary))
        os.replace(temporary, target)

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """The cached vectors of ``texts`` (fp32, one row each); a text never given to :meth:`ensure` is an error."""
        try:
            rows = [self.rows[text_key(text)] for text in texts]
        except KeyError:
            absent = next(text for text in texts if text_key(text) not in self.rows)
            raise KeyError(
                f"the teacher's cache has no vector for {absent[:80]!r}; training texts must be given to "
                "TeacherVectors.ensure before training (bellm_st.training.train does this)"
            ) from None
        return torch.from_numpy(self.vectors[rows].astype(np.float32))

    def __getstate__(self) -> dict:
        # Data-loader workers need the vectors, not the teacher model.
        state = dict(self.__dict__)
        state["teacher"] = None
        return state
