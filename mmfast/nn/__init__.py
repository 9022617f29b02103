"""Reusable modules and losses that models are composed from (plain PyTorch unless a kernel
pays off): the LightGCN ID line, per-modality feature projections and GNNs, the user lift R̂,
AlignRec's purifier, alignment losses and stage-1 aligner,
modality fusion, SEA's separate learning and CLUB q-net, FREEDOM's edge pruning, BPR; for the
MMRec baselines: message passing with learnable edge weights (GRCN), hypergraphs (LGMRec),
LATTICE's learned item graph, DualGNN/DRAGON's sampled user-user aggregation, dropout and
masking views (SLMRec, BM3), SelfCF's random-rate edge dropout, DA-MRS's neighbour
discrimination in row blocks (``mmfast.nn.neighbor_discrimination``), and the visual/textual
roles of a dataset's modalities."""
from mmfast.nn.alignment import (
    BehaviorPurifier,
    ContentAligner,
    similarity_preservation_loss,
    ui_cosine_loss,
)
from mmfast.nn.bma import BMA_FUSIONS, BehaviorModalAlignment
from mmfast.nn.bpr import batch_rows, bpr_loss, embedding_norm_loss, half_squared_norm_loss
from mmfast.nn.club import ClubNet
from mmfast.nn.edge_dropout import RandomRateEdgeDropout
from mmfast.nn.edge_pruning import DegreeSensitivePruning
from mmfast.nn.features import ModalityProjection, check_features
from mmfast.nn.fusion import ItemGraphSmoothing, UserModalityWeights
from mmfast.nn.gate import GATES, FilterGate
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.lift import UserLift
from mmfast.nn.modal_fusion import MODAL_FUSES, ModalityFusion
from mmfast.nn.modal_gnn import ModalityGNN
from mmfast.nn.multiview import lifted_item_view, multiview_loss
from mmfast.nn.relation_graph import RelationGraph, UserKNNGraph
from mmfast.nn.s3 import SimilaritySupervision, cosine_similarity_target
from mmfast.nn.edge_weights import EdgeList, segment_softmax
from mmfast.nn.hypergraph import HypergraphConv, gumbel_softmax, keep_dropout
from mmfast.nn.item_graph import LearnedItemGraph
from mmfast.nn.roles import image_text_roles, visual_textual, visual_textual_roles
from mmfast.nn.ssl_views import BranchMasking, DropoutView, dropout_chain_views
from mmfast.nn.user_graph import UserGraphAggregation
from mmfast.nn.separation import (
    DISTANCING,
    ProjectionHead,
    SeparateLearning,
    log2_scale,
    ordered_modalities,
    split_halves,
)

__all__ = [
    "BehaviorPurifier", "ContentAligner", "similarity_preservation_loss", "ui_cosine_loss",
    "DISTANCING", "ClubNet", "DegreeSensitivePruning", "ItemGraphSmoothing", "LightGCNEmbeddings",
    "ModalityGNN", "ModalityProjection", "ProjectionHead", "SeparateLearning", "UserLift",
    "UserModalityWeights", "batch_rows", "bpr_loss", "check_features", "embedding_norm_loss",
    "log2_scale", "ordered_modalities",
    "split_halves",
]
__all__ += [  # DRepMRec
    "BMA_FUSIONS", "BehaviorModalAlignment", "FilterGate", "GATES", "MODAL_FUSES", "ModalityFusion",
    "RelationGraph", "SimilaritySupervision", "UserKNNGraph", "cosine_similarity_target",
]
__all__ += [  # MMRec baselines
    "BranchMasking", "DropoutView", "EdgeList", "HypergraphConv", "LearnedItemGraph",
    "UserGraphAggregation", "dropout_chain_views", "gumbel_softmax", "image_text_roles",
    "keep_dropout", "segment_softmax", "visual_textual", "visual_textual_roles",
    "RandomRateEdgeDropout", "half_squared_norm_loss", "lifted_item_view", "multiview_loss",
]
