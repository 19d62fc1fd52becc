"""The seed notebook (/work/shared/seed/scanco-notebook.txt) as a script, for the benchmark.

    python bench/seed_pipeline.py INPUT.ISQ OUT_DIR

Same steps and outputs as the notebook's cells, in the same order, with the same libraries:

1. ``itk.imread`` of the SCANCO file (itk-ioscanco), ``metadata = dict(image)``,
   ``HU_pixels = itk.array_view_from_image(image)``; the metadata written to ``<stem>_metadata.txt``;
2. thresholds from per-mille values (0.250 and 1.0 of the maximum data value) turned into HU;
3. ``itk.binary_threshold_image_filter`` -> ``<stem>_BWmask.nrrd`` (``itk.imwrite``);
4. ``RHO_pixels`` computed with numpy on the whole volume -> ``<stem>_RHO.nrrd``;
5. ``HU_pixels`` -> ``<stem>_HU.nrrd``.

Differences from the notebook, all needed to run it on an arbitrary file, none changing the work done:

* the calibration constants come from this file's ITK metadata (MuScaling, MuWater, RescaleSlope,
  RescaleIntercept) instead of a header string pasted from another scan; the maximum data value,
  which ITK does not report, is 32767 (the value in the notebook's pasted header);
* ``dict(image)`` raises on this itk-ioscanco version (one metadata entry, PixelDimensions, cannot be
  down-cast), so the dictionary is built key by key, skipping entries that cannot be read;
* metadata entries that ``image[key] = value`` cannot store back are skipped;
* the NRRD ImageIO is named explicitly in ``itk.imwrite`` (with itk-ioscanco installed ITK can otherwise
  pick another writer for ``.nrrd``).
"""

from __future__ import annotations

import sys
from pathlib import Path


def _metadata_dict(image) -> dict:
    try:
        return dict(image)
    except RuntimeError:  # an entry that cannot be down-cast (itk-ioscanco 1.0.1: PixelDimensions)
        out = {}
        for key in image.GetMetaDataDictionary().GetKeys():
            try:
                out[key] = image[key]
            except RuntimeError:
                pass
        return out


def _imwrite(itk, image, path: Path) -> None:
    writer = itk.ImageFileWriter[type(image)].New()
    writer.SetImageIO(itk.NrrdImageIO.New())
    writer.SetFileName(str(path))
    writer.SetInput(image)
    writer.Update()


def _copy_metadata(target, metadata: dict) -> None:
    for key, value in metadata.items():
        try:
            target[key] = value
        except (TypeError, RuntimeError, AttributeError, KeyError):
            pass


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    import itk

    file_path, out_dir = Path(args[0]), Path(args[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = file_path.name.split(";")[0].rsplit(".", 1)[0]

    # cell: read
    image = itk.imread(str(file_path))
    metadata = _metadata_dict(image)
    HU_pixels = itk.array_view_from_image(image)

    # cell: metadata text file
    (out_dir / f"{stem}_metadata.txt").write_text(str(metadata))

    # cell: constants (from this file's metadata; the notebook pasted them from another scan's header)
    mu_threshold_low = 0.250
    mu_threshold_high = 1.0
    scanco_mu = float(metadata["MuScaling"])
    max_val = 32767.0
    density_slope = float(metadata["RescaleSlope"])
    density_intercept = float(metadata["RescaleIntercept"])
    water_mu = float(metadata["MuWater"])

    mu_low = mu_threshold_low * max_val
    mu_pixel_low = mu_low / scanco_mu
    mu_high = mu_threshold_high * max_val
    mu_pixel_high = mu_high / scanco_mu
    HU_pixel_low = (-1000) + mu_pixel_low * (1000 / water_mu)
    HU_pixel_high = (-1000) + mu_pixel_high * (1000 / water_mu)
    HU_values = [HU_pixel_low, HU_pixel_high]

    # cell: binary mask
    lower_threshold = int(round(HU_values[0]))
    upper_threshold = int(round(HU_values[1]))
    inside_value = 1
    outside_value = 0
    BW_image = itk.binary_threshold_image_filter(image, lower_threshold=lower_threshold,
                                                 upper_threshold=upper_threshold,
                                                 inside_value=inside_value, outside_value=outside_value)
    _imwrite(itk, BW_image, out_dir / f"{stem}_BWmask.nrrd")

    # cell: density with numpy on the whole volume
    RHO_pixels = ((((HU_pixels + 1000) / (1000 / water_mu)) * density_slope) + density_intercept) / 1000

    # cell: density NRRD
    RHO_out = itk.image_view_from_array(RHO_pixels)
    _copy_metadata(RHO_out, metadata)
    _imwrite(itk, RHO_out, out_dir / f"{stem}_RHO.nrrd")

    # cell: HU NRRD
    HU_out = itk.image_view_from_array(HU_pixels)
    _copy_metadata(HU_out, metadata)
    _imwrite(itk, HU_out, out_dir / f"{stem}_HU.nrrd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
