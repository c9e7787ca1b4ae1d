"""The data-prep flags that data_prep.build and data_prep.audit share.

Both binaries take the same --input and the flags that make a `PrepConfig`
(with PrepConfig's defaults: nothing here restates a default). They are
defined by a function, called once at each binary's top, rather than at this
module's import: the library (data_prep.build_lib) is imported into other absl
programs, with their own --input, --seed, ..., and must define no flag there.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from data_prep import config as config_lib, synth

# The flags that are PrepConfig fields, passed to `config.make_config` by name.
CONFIG_FLAGS = ("resolution", "variants_per_face", "seed", "splits", "occluders_dir",
                "category_weights", "max_pixels", "all_faces", "max_faces", "min_face_size",
                "min_confidence", "max_padding", "max_yaw", "max_pitch", "max_landmark_error",
                "shadow_prob", "image_share", "jpeg_prob", "jpeg_quality", "group_by",
                "near_duplicates", "clean_dir", "landmarker_model")


@dataclasses.dataclass(frozen=True)
class OutputFlags:
    """The holders of data_prep.build's output flags."""

    output_dir: flags.FlagHolder
    num_shards: flags.FlagHolder
    manual_dir: flags.FlagHolder
    tfds_data_dir: flags.FlagHolder
    overwrite: flags.FlagHolder


@dataclasses.dataclass(frozen=True)
class PrepFlags:
    """The holders of the shared flags."""

    input: flags.FlagHolder
    config: dict[str, flags.FlagHolder]

    def make_config(self) -> config_lib.PrepConfig:
        """The PrepConfig the flags ask for (checked: see `config.make_config`)."""
        return config_lib.make_config(**{name: h.value for name, h in self.config.items()})


def define_prep_flags(flag_values: flags.FlagValues = flags.FLAGS) -> PrepFlags:
    """Defines --input and the PrepConfig flags in `flag_values`; returns their holders."""
    d = config_lib.default
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "input", None, "A folder (searched recursively; links followed, loops not), a glob such as "
        "'photos/*.jpg', several of them separated by commas (ids get each folder's name as "
        "prefix), or tfds:NAME[:SPLIT] for a TFDS dataset (see --manual_dir). With --clean_dir: "
        "the occluded photos.", **fv)
    flags.DEFINE_integer("resolution", d("resolution"), "Side of the aligned face crops: a multiple "
                         f"of {config_lib.RESOLUTION_MULTIPLE} (64, 128, 256, 512).", **fv)
    flags.DEFINE_integer("variants_per_face", d("variants_per_face"), "Occluded versions of each face.",
                         **fv)
    flags.DEFINE_integer("seed", d("seed"), "Seeds every random choice (with source id and variant).",
                         **fv)
    flags.DEFINE_string("splits", config_lib.format_splits(d("splits")),
                        "Split names and fractions; split by hash of each person's group.", **fv)
    flags.DEFINE_string(
        "occluders_dir", d("occluders_dir"), "Folder of RGBA occluders, one sub-folder per category "
        "(like ../shared/occluders). Without it only procedural occluders are drawn.", **fv)
    flags.DEFINE_string(
        "category_weights", None, "e.g. 'face_mask=3,sunglasses=1,procedural=1'; listed categories "
        f"only. Default: {','.join(f'{k}={v:g}' for k, v in synth.DEFAULT_WEIGHTS.items())}.", **fv)
    flags.DEFINE_integer("max_pixels", d("max_pixels"),
                         "Images with more pixels are rejected as too_large, undecoded.", **fv)
    flags.DEFINE_bool("all_faces", d("all_faces"), "Keep every face above --min_face_size, "
                      "not only the largest.", **fv)
    flags.DEFINE_integer("max_faces", d("max_faces"), "Most faces detected per photo.", **fv)
    flags.DEFINE_integer("min_face_size", d("min_face_size"),
                         "Smallest face width (source pixels) kept; smaller: face_too_small.", **fv)
    flags.DEFINE_float("min_confidence", d("min_confidence"), "MediaPipe face detection threshold.",
                       **fv)
    flags.DEFINE_float(
        "max_padding", d("max_padding"), "Largest share of the aligned crop that may lie outside "
        "the photo (filled FFHQ-style); more: insufficient_context. The default keeps tight face "
        "crops (UTKFace) whose whole face is in the photo; see data_prep/README.md.", **fv)
    flags.DEFINE_float("max_yaw", d("max_yaw"), "Largest head turn (degrees) kept; more: "
                       "implausible_landmarks.", **fv)
    flags.DEFINE_float("max_pitch", d("max_pitch"), "Largest head tilt up/down (degrees) kept.", **fv)
    flags.DEFINE_float("max_landmark_error", d("max_landmark_error"), "Largest RMS misfit "
                       "(inter-ocular distances) of the landmarks to a posed 3D face.", **fv)
    flags.DEFINE_float("shadow_prob", d("shadow_prob"), "Probability of a soft shadow under an "
                       "occluder.", **fv)
    flags.DEFINE_float("image_share", d("image_share"), "For masks and glasses, the probability of an "
                       "image occluder rather than a procedural one.", **fv)
    flags.DEFINE_float("jpeg_prob", d("jpeg_prob"), "Probability of one JPEG round trip applied to "
                       "clean and occluded alike (the mask grows to every pixel it changed).", **fv)
    flags.DEFINE_string("jpeg_quality", ",".join(map(str, d("jpeg_quality"))),
                        "LOW,HIGH JPEG quality range of that round trip.", **fv)
    flags.DEFINE_string(
        "group_by", d("group_by"), "Regular expression over source ids whose first group names the "
        r"person, so that a person's photos share a split; e.g. '^lfw/(.+)_\d{4}\.jpg$' for LFW. "
        "Ids that do not match are their own group.", **fv)
    flags.DEFINE_float("near_duplicates", d("near_duplicates"), "Similarity of aligned faces above "
                       "which two photos are one group (re-saved, cropped, mirrored copies); 0: off.",
                       **fv)
    flags.DEFINE_string("clean_dir", d("clean_dir"), "Paired input: folder of clean originals; each "
                        "photo of --input is an occluded copy matched by name (00012_Mask.jpg -> "
                        "00012.png, MaskedFace-Net's layout) and recorded with category 'paired'.",
                        **fv)
    flags.DEFINE_string("landmarker_model", d("landmarker_model"),
                        "Path of face_landmarker.task (default: $DEOCC_ASSETS_DIR, cache, download).",
                        **fv)
    return PrepFlags(input=flags.FlagHolder(flag_values, flag_values["input"]),
                     config={name: flags.FlagHolder(flag_values, flag_values[name])
                             for name in CONFIG_FLAGS})


def define_output_flags(flag_values: flags.FlagValues = flags.FLAGS) -> OutputFlags:
    """Defines data_prep.build's output flags in `flag_values`; returns their holders.

    data_prep.audit defines them too and ignores them, so that a build's
    command line runs as an audit with only the module name changed.
    """
    fv = {"flag_values": flag_values}
    return OutputFlags(
        output_dir=flags.DEFINE_string("output_dir", None, "Where the dataset is written (built in a "
                                       "hidden sibling folder and moved there when complete).", **fv),
        num_shards=flags.DEFINE_integer("num_shards", None, "Shards per split; default ~128 MiB per "
                                        "shard.", **fv),
        manual_dir=flags.DEFINE_string("manual_dir", None, "TFDS manual download folder (e.g. for "
                                       "celeb_a_hq).", **fv),
        tfds_data_dir=flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.", **fv),
        overwrite=flags.DEFINE_bool("overwrite", False, "Replace an existing dataset in --output_dir, "
                                    "once the new one is complete.", **fv))
