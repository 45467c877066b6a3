"""The pipeline's stages as functions over files (hloc's shape); :func:`matcher.pipeline.run_match` is their
composition. Each takes only its config section(s), resumes from its own output file, and returns its counts:

    extract_features(image_dir, features.h5, names, FeatureSettings(...))   -> ExtractionCounts
    make_pairs(features.h5, config.pairs, image_dir=...)                    -> [(name1, name2), ...]
    match_features(features.h5, pairs, matches.h5, config.matching, config.verification) -> MatchCounts
    expand_pairs(features.h5, pairs, matches.h5, config.pairs, config.matching, config.verification)
                                                    -> PairExpansion (all pairs; verified-neighbour rounds matched)
    export_database(image_dir, features.h5, matches.h5, pairs, db, config.export)        -> ExportCounts
    reconstruct(db, image_dir, out_dir, config.mapping)                     -> ReconstructionSummary

``ray="auto"`` (or a cluster address) runs extraction and matching as Ray tasks (:mod:`matcher.distributed`);
the files are the same.
"""

from __future__ import annotations

from matcher.api import reconstruct
from matcher.stages.cache import FEATURE_SECTIONS, MATCH_SECTIONS
from matcher.stages.export import ExportCounts, export_database
from matcher.stages.extract import ExtractionCounts, FeatureSettings, extract_features, extract_image
from matcher.stages.match import MatchCounts, match_features, match_pair, threshold_px, verify_matches
from matcher.stages.pairs import PairExpansion, expand_pairs, make_pairs, write_pairs_file

__all__ = [
    "FEATURE_SECTIONS", "MATCH_SECTIONS", "FeatureSettings", "ExtractionCounts", "MatchCounts", "ExportCounts",
    "extract_features", "extract_image", "make_pairs", "write_pairs_file", "expand_pairs", "PairExpansion",
    "match_features", "match_pair",
    "verify_matches", "threshold_px", "export_database", "reconstruct",
]
