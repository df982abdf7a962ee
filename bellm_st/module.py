"""The sentence-transformers module that makes a decoder a BeLLM sentence encoder.

One module holds everything BeLLM adds to a backbone — which layers are bi-directional, the
prompt template, the pooling and the EOS policy — and saves it next to the backbone's weights,
so ``model.save(dir)`` followed by ``bellm_st.load(dir)`` gives the same embeddings.

The backbone runs in torch, or with ``backend="onnx"`` as the folder's exported graph in ONNX
Runtime (:mod:`bellm_st.onnx_backbone`, imported only then); everything else is this module's
code for both.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from sentence_transformers.base.modules.input_module import InputModule
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from bellm_st.bidirectional import (
    BidirectionalLayers,
    find_decoder_layers,
    make_bidirectional,
    resolve_layer_indices,
    text_config,
)
from bellm_st.config import EncoderSettings, read_settings
from bellm_st.inputs import validate_texts
from bellm_st.pooling import PoolingMode, check_pooling, pool
from bellm_st.prompts import DEFAULT_TEMPLATE, Template, template_for_prompt
from bellm_st.pruning import DEFAULT_KEEP_LAYERS, check_bidirectional_fits, check_keep_layers, prune_layers
from bellm_st.tokenization import TokenizedBatch, ensure_pad_token, tokenize_flat, tokenize_with_template

CONFIG_FILE = "bellm_config.json"
ADAPTER_FOLDER = "adapter"
DEFAULT_MAX_SEQ_LENGTH = 512
BATCH_LAYOUT = "batch_layout"  # the feature that carries a batch's layout when it is not padded
BACKENDS = ("torch", "onnx")


class BatchLayout(Protocol):
    """Another arrangement of a batch's tokens than padding, giving the padded batch's embeddings faster.

    The method needs padded batches only; :mod:`bellm_st.fast` lays batches out as packed rows,
    one flat row or rows of one length, and plugs them in here, so this module imports none of
    them. A batch in such a layout carries the layout object under :data:`BATCH_LAYOUT`.
    """

    def preprocess(
        self, encoder: BeLLMEncoder, texts: list[str], prompt: str | None, max_length: int
    ) -> dict[str, Any]:
        """Validated texts as features in this layout (what :meth:`BeLLMEncoder.preprocess` returns)."""

    def embed(self, encoder: BeLLMEncoder, features: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The token states and one pooled (not yet normalised) vector per text of such a batch."""


class IdentityConfigurationWarning(UserWarning):
    """Only the last layer is bi-directional and pooling is last-token: the causal model's vector."""


def check_backend(backend: str) -> str:
    """The backend, or an error naming the ones there are (sentence-transformers' ``openvino`` is not one)."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not one of {', '.join(BACKENDS)}; use 'onnx' for ONNX Runtime on a CPU "
            "(the graph of `bellm-st export --onnx`) or 'torch'"
        )
    return backend


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> PreTrainedTokenizerBase:
    """Give GGUF-converted tokenizers what encoding needs: a pad token and a length limit."""
    ensure_pad_token(tokenizer)
    if not tokenizer.model_max_length or tokenizer.model_max_length > 10**8:
        tokenizer.model_max_length = max_seq_length
    return tokenizer


def preprocess_texts(
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[Any],
    template: str,
    prompt: str | None,
    max_seq_length: int,
    append_eos: bool,
) -> dict[str, torch.Tensor]:
    """Texts to model inputs: validated, wrapped in the (prompted) template, tokenised and padded.

    The one definition of BeLLM's input side, shared by :class:`BeLLMEncoder` and the ONNX
    encoder, so both see identical token ids for the same texts and settings.
    """
    texts = validate_texts(inputs, where="texts")
    return tokenize_with_template(
        tokenizer, texts, template_for_prompt(template, prompt), max_seq_length, append_eos
    )


class BeLLMEncoder(InputModule):
    """A decoder-only LLM with its last layers made bi-directional, read out through a template.

    Args:
        model_name_or_path: a local checkpoint folder or a hub id of a decoder-only model.
        bidirectional_layers: ``k`` (the last k layers) or explicit layer indices; 0 is the causal model.
        template: a prompt template with one ``{text}`` slot.
        pooling: ``last``, ``mean`` or ``mean_text`` (see :mod:`bellm_st.pooling`).
        append_eos: append the tokenizer's EOS token after the template.
        normalize: L2-normalise the sentence embedding inside the model.
        max_seq_length: token budget; longer texts are truncated, the template never.
        model_kwargs: passed to ``AutoModel.from_pretrained`` (``dtype``, ``attn_implementation``...); with
            ``backend="onnx"``, to :meth:`~bellm_st.onnx_backbone.OnnxBackbone.load` (``file_name``,
            ``provider``, ``session_options``). ``trust_remote_code`` there (False unless given) also applies
            to the tokenizer.
        backbone, tokenizer: already-loaded objects to use instead of loading from the path.
        batch_layout: how :meth:`preprocess` lays out a batch; ``None`` pads each text to the longest.
            A :class:`BatchLayout` from :mod:`bellm_st.fast` gives the same embeddings faster
            (``PackedRows(256)``: texts end to end, no compute on padding). A run-time choice, not
            saved with the model; ``bellm-st train`` packs.
        keep_layers: keep only the first N decoder layers (see :mod:`bellm_st.pruning`); the
            bi-directional layers are counted among those kept. Not saved as a setting: the saved
            backbone config describes the pruned model. None keeps every layer.
        backend: ``torch``, or ``onnx`` to run the graph of ``model_name_or_path``'s ``onnx/`` folder in
            ONNX Runtime (on CPU; batches padded, layers as exported).
    """

    config_file_name = CONFIG_FILE
    config_keys = list(EncoderSettings.model_fields)
    save_in_root = True

    def __init__(
        self,
        model_name_or_path: str | None = None,
        bidirectional_layers: BidirectionalLayers = 0,
        template: str = DEFAULT_TEMPLATE,
        pooling: PoolingMode = "last",
        append_eos: bool = False,
        normalize: bool = False,
        max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
        model_kwargs: dict[str, Any] | None = None,
        backbone: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_layout: BatchLayout | None = None,
        keep_layers: int | None = DEFAULT_KEEP_LAYERS,
        backend: str = "torch",
    ):
        super().__init__()
        self.backend = check_backend(backend)
        Template.parse(template)
        if not isinstance(max_seq_length, int) or max_seq_length < 2:
            raise ValueError(f"max_seq_length={max_seq_length!r} must be an int of at least 2")
        self.template = template
        self.pooling = check_pooling(pooling)
        self.append_eos = bool(append_eos)
        self.normalize = bool(normalize)
        self.max_seq_length = max_seq_length
        # Never left unset: transformers would then ask on the terminal whether to run a folder's auto_map code.
        model_kwargs = {"trust_remote_code": False, **(model_kwargs or {})}
        if backend == "onnx":
            given = (backbone, batch_layout, keep_layers)
            if model_name_or_path is None or any(option is not None for option in given):
                raise ValueError(
                    "backend='onnx' loads the graph of model_name_or_path as exported: give the folder, "
                    "and no backbone, batch_layout or keep_layers"
                )
            from bellm_st.onnx_backbone import OnnxBackbone

            backbone = OnnxBackbone.load(model_name_or_path, **model_kwargs)
        else:
            if backbone is None:
                if model_name_or_path is None:
                    raise ValueError("give either model_name_or_path or an already-loaded backbone")
                backbone = AutoModel.from_pretrained(model_name_or_path, **model_kwargs)
            prune_layers(backbone, keep_layers)
        check_bidirectional_fits(bidirectional_layers, keep_layers)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(
                model_name_or_path or backbone.name_or_path, trust_remote_code=model_kwargs["trust_remote_code"]
            )
        self.auto_model = backbone
        self.tokenizer = prepare_tokenizer(tokenizer, max_seq_length)
        self.bidirectional_layers = bidirectional_layers
        self.batch_layout = batch_layout

    # -- the bi-directional layer choice -------------------------------------------------------
    @property
    def bidirectional_layers(self) -> BidirectionalLayers:
        return self._bidirectional_layers

    @bidirectional_layers.setter
    def bidirectional_layers(self, value: BidirectionalLayers) -> None:
        if isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)
        if self.backend == "onnx":
            indices = self._exported_layer_indices(value)
            num_layers = text_config(self.auto_model).num_hidden_layers
        else:
            indices = make_bidirectional(self.decoder, value).layer_indices
            num_layers = len(find_decoder_layers(self.decoder))
        self._bidirectional_layers = value
        self.bidirectional_layer_indices = indices
        if self.pooling == "last" and indices == (num_layers - 1,):
            warnings.warn(
                "only the last layer is bi-directional and pooling is 'last': the last token already sees every "
                "token, so this gives exactly the causal model's embedding; use bidirectional_layers>=2 or "
                "pooling='mean' for backward dependencies to reach the embedding",
                IdentityConfigurationWarning,
                stacklevel=3,
            )

    def _exported_layer_indices(self, value: BidirectionalLayers) -> tuple[int, ...]:
        """The layers the folder's settings name, which must be those the graph was exported with."""
        if hasattr(self, "_bidirectional_layers"):
            raise ValueError(
                f"bidirectional_layers={value!r}: an ONNX graph keeps the layers it was exported with "
                f"({self._bidirectional_layers!r}); load the folder with backend='torch' to change them"
            )
        indices = resolve_layer_indices(text_config(self.auto_model).num_hidden_layers, value)
        exported = self.auto_model.bidirectional_layer_indices
        if exported is not None and exported != indices:
            raise ValueError(
                f"{self.auto_model.graph} was exported with bi-directional layers {list(exported)}, but the folder's "
                f"{CONFIG_FILE} names {list(indices)} (bidirectional_layers={value!r}); export the graph again "
                "from this model"
            )
        return indices

    @property
    def decoder(self) -> PreTrainedModel:
        """The transformers model under any PEFT wrapper (where the layers live)."""
        if self.backend == "onnx":
            raise ValueError(
                "this encoder runs its exported ONNX graph (backend='onnx') and has no torch decoder to change, "
                "train or run on a GPU; load the folder with backend='torch' for that"
            )
        model = self.auto_model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    # -- sentence-transformers contract -------------------------------------------------------
    def preprocess(
        self, inputs: Sequence[Any], prompt: str | None = None, max_length: int | None = None, **kwargs
    ) -> dict[str, Any]:
        """``max_length`` overrides ``max_seq_length`` for this batch (the trainer passes a task's own budget)."""
        budget = max_length or self.max_seq_length
        if self.batch_layout is None:
            return preprocess_texts(self.tokenizer, inputs, self.template, prompt, budget, self.append_eos)
        return self.batch_layout.preprocess(self, validate_texts(inputs, where="texts"), prompt, budget)

    def tokenize_unpadded(
        self, texts: Sequence[str], prompt: str | None = None, max_length: int | None = None
    ) -> TokenizedBatch:
        """Tokenise like :meth:`preprocess` but leave the batch flat and unpadded (for bulk encoding).

        The text mask is only located when the pooling needs it (``mean_text``).
        """
        template = template_for_prompt(self.template, prompt)
        return tokenize_flat(
            self.tokenizer, list(texts), template, max_length or self.max_seq_length, self.append_eos,
            with_text_mask=self.pooling == "mean_text",
        )

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        layout: BatchLayout | None = features.get(BATCH_LAYOUT)
        if layout is None:
            outputs = self.auto_model(
                input_ids=features["input_ids"], attention_mask=features["attention_mask"], use_cache=False
            )
            token_embeddings = outputs.last_hidden_state
            embedding = pool(token_embeddings, features["attention_mask"], features.get("text_mask"), self.pooling)
        else:
            token_embeddings, embedding = layout.embed(self, features)
        if self.normalize:
            embedding = torch.nn.functional.normalize(embedding, p=2, dim=-1)
        features["token_embeddings"] = token_embeddings
        features["sentence_embedding"] = embedding
        return features

    def get_embedding_dimension(self) -> int:
        return text_config(self.auto_model).hidden_size

    def get_config_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.config_keys}

    # -- persistence ---------------------------------------------------------------------------
    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        os.makedirs(output_path, exist_ok=True)
        if hasattr(self.auto_model, "peft_config"):
            base_state = {
                key.replace(".base_layer", ""): value
                for key, value in self.decoder.state_dict().items()
                if "lora_" not in key
            }
            self.decoder.save_pretrained(output_path, state_dict=base_state, safe_serialization=safe_serialization)
            self.auto_model.save_pretrained(os.path.join(output_path, ADAPTER_FOLDER))
        else:
            self.auto_model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        backend: str = "torch",
        **kwargs,
    ) -> BeLLMEncoder:
        """Load a saved encoder; transformers runs no code from the folder unless ``trust_remote_code``
        (see :mod:`bellm_st.loading`). sentence-transformers passes its ``backend`` here."""
        check_backend(backend)
        local_path = cls.load_dir_path(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        settings = read_settings(os.path.join(local_path, CONFIG_FILE), EncoderSettings).model_dump()
        model_kwargs = {**(model_kwargs or {}), "trust_remote_code": trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(local_path, trust_remote_code=trust_remote_code)
        if backend == "onnx":
            return cls(local_path, tokenizer=tokenizer, model_kwargs=model_kwargs, backend=backend, **settings)
        backbone = AutoModel.from_pretrained(local_path, **model_kwargs)
        adapter_path = os.path.join(local_path, ADAPTER_FOLDER)
        if os.path.isdir(adapter_path):
            try:  # inside try: a folder carrying this file needs peft only when it holds an adapter
                from peft import PeftModel
            except ImportError as error:
                raise ImportError(f"{adapter_path} holds a LoRA adapter, which needs peft: pip install peft") from error
            backbone = PeftModel.from_pretrained(backbone, adapter_path)
        return cls(local_path, backbone=backbone, tokenizer=tokenizer, **settings)

    def keep_first_layers(self, keep_layers: int) -> None:
        """Prune a built or loaded encoder to its first ``keep_layers`` layers; the bi-directional
        choice is applied again, counted among the layers that remain."""
        if hasattr(self.auto_model, "peft_config"):
            raise ValueError("merge the LoRA adapter (merge_adapter()) before pruning layers")
        check_keep_layers(keep_layers, len(find_decoder_layers(self.decoder)))
        check_bidirectional_fits(self.bidirectional_layers, keep_layers)
        self.decoder._bellm_patch.remove()
        prune_layers(self.decoder, keep_layers)
        self.bidirectional_layers = self.bidirectional_layers

    def merge_adapter(self) -> None:
        """Fold a LoRA adapter into the backbone's weights (faster inference, plain checkpoint)."""
        if hasattr(self.auto_model, "merge_and_unload"):
            layers = self.bidirectional_layers
            self.auto_model = self.auto_model.merge_and_unload()
            self.bidirectional_layers = layers

    def __repr__(self) -> str:
        backbone = self.auto_model if self.backend == "onnx" else self.decoder
        return f"BeLLMEncoder({self.get_config_dict()}, backbone={type(backbone).__name__})"
