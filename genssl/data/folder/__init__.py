"""Your own images (`data: {dataset: folder, ...}`): folders or CSV files of image files, decoded once into the
uint8 tensors every other dataset is, and the run's labeled / unlabeled / validation split over them.

    data:
      dataset: folder
      labeled: my/labeled        # one subfolder per class (class names = folder names), or a CSV of path,label
      unlabeled: my/unlabeled    # any tree of images, no labels
      test: my/test              # laid out like `labeled`
      val: my/val                # optional; else val_fraction of each labeled class is held out (stratified)
      image_size: [64, 64]       # every image is resized to this (H, W)
      channels: 3                # 1 (grey) or 3 (RGB); modes (grey, RGB, RGBA, palette, 16-bit) are converted
      skip_bad: false            # true: leave unreadable files out, with a warning that names them

The training set is one `FolderData`: the labeled images first (class by class, paths sorted), then the
validation images when `val` is a folder of its own, then the unlabeled ones, which carry the label
`UNLABELED` (-1). The split's pools are these index ranges, not a random draw: `folder_split`.
`load_image_folder(path)` reads one labeled folder the same way, from Python.

The reader in four parts, each a module of its own:
  files    listing: the image files of a folder, a labeled source's (paths, class names) from class folders or a CSV
  decode   decoding: one file to (C, H, W) uint8 (every PIL mode, resized), many files in a thread pool
  cache    the decoded tensors cached under ~/.cache/genssl/folders, keyed by the files and the settings
  dataset  FolderData, load_folder_data, folder_split, load_image_folder
"""

from genssl.data.folder.cache import CACHE_VERSION, fingerprint, folder_cache_dir, load_images
from genssl.data.folder.dataset import (
    UNLABELED,
    FolderData,
    folder_split,
    load_folder_data,
    load_image_folder,
    report_bad,
    resolve_path,
)
from genssl.data.folder.decode import MAX_PIXELS, decode_files, decode_image
from genssl.data.folder.files import IMAGE_EXTENSIONS, SHOW_BAD, is_image_file, list_images, list_labeled

__all__ = ["CACHE_VERSION", "IMAGE_EXTENSIONS", "MAX_PIXELS", "SHOW_BAD", "UNLABELED", "FolderData", "decode_files",
           "decode_image", "fingerprint", "folder_cache_dir", "folder_split", "is_image_file", "list_images",
           "list_labeled", "load_folder_data", "load_image_folder", "load_images", "report_bad", "resolve_path"]
