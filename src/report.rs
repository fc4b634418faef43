//! What a run leaves for people and other tools besides the artifact: PNG grids of the
//! bases and of the images they make, a `metrics.jsonl` log, a typed JSON report
//! ([`Report`]) in a run directory whose file names live in one place ([`RunDir`]), and
//! the hallucinated set as a plain folder of PNG files per class.
//!
//! Images are stored normalised (mean/std or ZCA, see [`Normalization`]). A picture shows
//! them in one of two [`Display`]s: de-normalised to true colour and clamped to [0, 1]
//! (`bases.png`, `hallucinated.png`), or each image stretched from its own minimum to its
//! maximum (`bases-stretched.png`, `hallucinated-stretched.png`), which shows what a
//! hallucinator does even where its output saturates.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
use serde::Serialize;

use crate::artifact::{Artifact, write_atomic};
use crate::data::Normalization;
use crate::error::{Error, Result};

/// How a picture maps an image's stored values to colours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Display {
    /// De-normalised and clamped to [0, 1]: the colours the network is trained on.
    /// Single-channel images the normalisation does not fit (HaBa's one-channel bases of
    /// colour data) have no true colour and are stretched as [`Display::Stretch`] does.
    #[default]
    TrueColour,
    /// De-normalised, then each image mapped linearly from its own minimum (black) to its
    /// maximum (white), over all its channels (torchvision's
    /// `save_image(normalize=True, scale_each=True)`).
    Stretch,
}

impl Display {
    pub const ALL: [Display; 2] = [Display::TrueColour, Display::Stretch];

    /// What a grid's file name adds for this display.
    pub fn file_suffix(self) -> &'static str {
        match self {
            Display::TrueColour => "",
            Display::Stretch => "-stretched",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Display::TrueColour => "true colour",
            Display::Stretch => "stretched per image",
        }
    }

    /// The name `--display` takes.
    pub fn name(self) -> &'static str {
        match self {
            Display::TrueColour => "true-colour",
            Display::Stretch => "stretch",
        }
    }

    /// `name.png` with this display's suffix before the extension.
    pub(crate) fn file_name(self, name: &str) -> String {
        let stem = name.strip_suffix(".png").unwrap_or(name);
        format!("{stem}{}.png", self.file_suffix())
    }
}

impl std::str::FromStr for Display {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| Error::Config(format!("display {s:?}: expected true-colour or stretch")))
    }
}

/// Width of the lines between (and around) tiles, in output pixels.
pub const BORDER_PX: usize = 2;
/// Their colour: white, in grey and in every RGB channel.
pub const BORDER_VALUE: u8 = 255;

/// Previews aim at tiles about this many pixels across, so 28x28 images are visible.
const PREVIEW_TILE_PX: usize = 64;
/// ...but shrink the scale for huge grids to keep a preview under this many pixels.
const PREVIEW_MAX_PIXELS: usize = 1 << 25;

/// Writes `images` (`[N, C, H, W]`, normalised) as a `rows x cols` grid PNG, filled row by
/// row, each image upscaled `scale` times (nearest neighbour), with a [`BORDER_PX`] border
/// of [`BORDER_VALUE`] between and around tiles. C = 1 gives a grey PNG, C = 3 an RGB one.
///
/// Images are de-normalised with `normalization` when it fits them. Single-channel images
/// of a colour dataset (HaBa's single-channel bases) cannot be: the normalisation mixes
/// three channels. Each such tile is instead stretched on its own from its minimum (black)
/// to its maximum (white), so it shows structure but not absolute brightness.
pub fn write_grid_png(
    path: &Path,
    images: Tensor<4>,
    normalization: &Normalization,
    rows: usize,
    cols: usize,
    scale: u32,
) -> Result<()> {
    let [n, c, h, w] = images.dims();
    let pixels =
        displayed(images, normalization, Display::TrueColour).map_err(|r| report_error(path, r))?;
    let slots: Vec<Option<usize>> = (0..n).map(Some).collect();
    let grid = Grid {
        tile: [c, h, w],
        rows,
        cols,
        scale: scale as usize,
    };
    write_tiles(path, &pixels, &grid, &slots)
}

/// `run_dir/bases.png`: one row per class, that class's bases left to right.
/// Single-channel bases of a colour dataset are shown grey, each stretched to its own
/// range (see [`write_grid_png`]).
pub fn bases_png(run_dir: &Path, artifact: &Artifact, display: Display) -> Result<PathBuf> {
    let path = RunDir::at(run_dir).bases_png(display);
    let f = &artifact.factorization;
    let [_, c, h, w] = f.bases.dims();
    let by_class = bases_by_class(artifact).map_err(|r| report_error(&path, r))?;
    let cols = by_class.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut slots = vec![None; by_class.len() * cols];
    for (row, bases) in by_class.iter().enumerate() {
        for (k, &i) in bases.iter().enumerate() {
            slots[row * cols + k] = Some(i);
        }
    }
    let pixels = displayed(f.bases.clone(), &artifact.normalization, display)
        .map_err(|r| report_error(&path, r))?;
    let grid = Grid {
        tile: [c, h, w],
        rows: by_class.len(),
        cols,
        scale: preview_scale(h, w, by_class.len(), cols),
    };
    write_tiles(&path, &pixels, &grid, &slots)?;
    Ok(path)
}

/// `run_dir/hallucinated.png`: one row per class; for each basis of the class, its M
/// hallucinated images side by side (the bases themselves when there are no
/// hallucinators).
pub fn hallucinated_png(run_dir: &Path, artifact: &Artifact, display: Display) -> Result<PathBuf> {
    let path = RunDir::at(run_dir).hallucinated_png(display);
    let fail = |r: String| report_error(&path, r);
    let f = &artifact.factorization;
    let n = f.len();
    let m = artifact.factorization.hallucinator_count().max(1);
    let image = artifact.meta.image;
    let by_class = bases_by_class(artifact).map_err(fail)?;
    let per_class = by_class.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let cols = per_class * m;
    let mut slots = vec![None; by_class.len() * cols];
    for (row, bases) in by_class.iter().enumerate() {
        for (k, &i) in bases.iter().enumerate() {
            for j in 0..m {
                // Pixels below are hallucinator-major: image j * n + i.
                slots[row * cols + k * m + j] = Some(j * n + i);
            }
        }
    }
    let mut pixels = Vec::with_capacity(m * n * image.numel());
    for j in 0..m {
        pixels.extend(hallucinated_pixels(artifact, j, display).map_err(fail)?);
    }
    let grid = Grid {
        tile: [image.channels, image.height, image.width],
        rows: by_class.len(),
        cols,
        scale: preview_scale(image.height, image.width, by_class.len(), cols),
    };
    write_tiles(&path, &pixels, &grid, &slots)?;
    Ok(path)
}

/// Writes every training image the artifact makes as `out_dir/<class>/<basis>_<h>.png`
/// (basis numbered within its class, h the hallucinator), true colour, original size: a
/// tree that torchvision's `ImageFolder` and similar loaders train on directly. Class
/// names become folder names through [`class_folder_names`]. Note that `ImageFolder`
/// numbers classes by sorted folder name, which need not be the dataset's class order.
///
/// Refuses a non-empty `out_dir`, so images of an earlier export never mix in. Returns
/// the number of images written (bases x hallucinators).
pub fn export_png_dir(artifact: &Artifact, out_dir: &Path) -> Result<usize> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    if out_dir.exists() {
        let mut entries = std::fs::read_dir(out_dir).map_err(io(out_dir))?;
        if entries.next().is_some() {
            return Err(report_error(
                out_dir,
                "the export directory is not empty; choose a new or empty one".into(),
            ));
        }
    }
    let fail = |r: String| report_error(out_dir, r);
    let by_class = bases_by_class(artifact).map_err(fail)?;
    let folders = class_folder_names(&artifact.meta.classes);
    // Where each basis goes: its class folder and its number within the class.
    let mut place = vec![(0, 0); artifact.factorization.len()];
    for (class, bases) in by_class.iter().enumerate() {
        if bases.is_empty() {
            continue; // ImageFolder rejects empty class folders
        }
        std::fs::create_dir_all(out_dir.join(&folders[class]))
            .map_err(io(&out_dir.join(&folders[class])))?;
        for (k, &i) in bases.iter().enumerate() {
            place[i] = (class, k);
        }
    }
    let image = artifact.meta.image;
    let mut written = 0;
    for j in 0..artifact.factorization.hallucinator_count().max(1) {
        let pixels = hallucinated_pixels(artifact, j, Display::TrueColour).map_err(fail)?;
        for (i, tile) in pixels.chunks_exact(image.numel()).enumerate() {
            let (class, k) = place[i];
            let path = out_dir.join(&folders[class]).join(format!("{k}_{j}.png"));
            let bytes = interleave(tile, image.channels, image.height * image.width);
            let png = encode_png(&bytes, image.width, image.height, image.channels)
                .map_err(|r| report_error(&path, r))?;
            std::fs::write(&path, png).map_err(io(&path))?;
            written += 1;
        }
    }
    Ok(written)
}

/// File-system-safe, distinct folder names for `classes`: characters that some file
/// system forbids (`/ \ : * ? " < > |`, control characters) become `_`, leading dots and
/// surrounding spaces go ("T-shirt/top" -> "T-shirt_top"); an empty result becomes
/// `class_<i>`, and a name equal to an earlier one (ignoring case, as macOS and Windows
/// do) gets `_<i>` appended.
pub fn class_folder_names(classes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(classes.len());
    for (i, class) in classes.iter().enumerate() {
        let cleaned: String = class
            .chars()
            .map(|ch| {
                if ch.is_control() || r#"/\:*?"<>|"#.contains(ch) {
                    '_'
                } else {
                    ch
                }
            })
            .collect();
        let mut name = cleaned
            .trim()
            .trim_start_matches('.')
            .trim_end_matches(['.', ' '])
            .to_string();
        if name.is_empty() {
            name = format!("class_{i}");
        }
        while out.iter().any(|o| o.eq_ignore_ascii_case(&name)) {
            name = format!("{name}_{i}");
        }
        out.push(name);
    }
    out
}

/// Appends one JSON document per line to `metrics.jsonl`, flushing each, so that the log
/// survives a crash and a resumed run continues the same file.
#[derive(Debug)]
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

/// Keeps only the records of `text` (a `metrics.jsonl`) up to `iteration`: what a run
/// resumed from its checkpoint at `iteration` logs again must not appear twice. Lines that
/// are not whole records (a crash mid-write) are dropped too. `final_eval_again`: the run
/// is finished and its resumption evaluates once more, so an evaluation logged at
/// `iteration` goes too (a mid-run one at a checkpoint came before it and stays).
pub fn metrics_up_to(text: &str, iteration: usize, final_eval_again: bool) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let it = v
            .get("iteration")
            .and_then(|i| i.as_u64())
            .map(|i| i as usize);
        let again = final_eval_again && it == Some(iteration) && v.get("eval").is_some();
        if it.is_some_and(|i| i <= iteration) && !again {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl MetricsLog {
    /// Opens `path` for appending, creating it if needed. A last line cut short by a crash
    /// is ended first, so the next record starts on a line of its own.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::End(-1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io)?;
            }
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `record` (normally a JSON object) as one line and flushes it.
    pub fn log(&mut self, record: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(record)
            .map_err(|e| report_error(&self.path, format!("encoding a metrics record: {e}")))?;
        line.push(b'\n');
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        // One write of the whole line, so a crash cuts at most the last line.
        self.file.write_all(&line).map_err(io)?;
        self.file.flush().map_err(io)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `value` as pretty JSON to `path` through `path.tmp` and a rename, so readers
/// never see half a report.
pub fn write_report_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| report_error(path, format!("encoding the report: {e}")))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// The scale that makes tiles about [`PREVIEW_TILE_PX`] across, reduced (down to 1) while
/// the whole grid would exceed [`PREVIEW_MAX_PIXELS`].
pub(crate) fn preview_scale(h: usize, w: usize, rows: usize, cols: usize) -> usize {
    let side = h.max(w).max(1);
    let mut scale = PREVIEW_TILE_PX.div_ceil(side).max(1);
    while scale > 1 {
        let (gh, gw) = grid_size(h * scale, w * scale, rows, cols);
        if gh.saturating_mul(gw) <= PREVIEW_MAX_PIXELS {
            break;
        }
        scale -= 1;
    }
    scale
}

/// The layout of a grid of tiles.
struct Grid {
    /// Channels, height and width of one image.
    tile: [usize; 3],
    rows: usize,
    cols: usize,
    scale: usize,
}

/// Height and width of a grid of `rows x cols` tiles of `th x tw` output pixels.
fn grid_size(th: usize, tw: usize, rows: usize, cols: usize) -> (usize, usize) {
    (
        rows * th + (rows + 1) * BORDER_PX,
        cols * tw + (cols + 1) * BORDER_PX,
    )
}

/// Draws image `slots[p]` of `pixels` (true colour, CHW, image after image) into grid
/// position p (row-major); `None` leaves a position blank. Encodes and writes the PNG.
fn write_tiles(path: &Path, pixels: &[f32], grid: &Grid, slots: &[Option<usize>]) -> Result<()> {
    let fail = |r: String| report_error(path, r);
    let [c, h, w] = grid.tile;
    if c != 1 && c != 3 {
        return Err(fail(format!("cannot draw {c}-channel images: need 1 or 3")));
    }
    if grid.scale == 0 {
        return Err(fail("the scale must be at least 1".into()));
    }
    if slots.len() > grid.rows * grid.cols {
        return Err(fail(format!(
            "{} images do not fit a grid of {} x {}",
            slots.len(),
            grid.rows,
            grid.cols
        )));
    }
    let per = c * h * w;
    let count = pixels.len().checked_div(per).unwrap_or(0);
    if let Some(bad) = slots.iter().flatten().find(|&&i| i >= count) {
        return Err(fail(format!("image {bad} asked for, only {count} given")));
    }
    let (th, tw) = (h * grid.scale, w * grid.scale);
    let (gh, gw) = grid_size(th, tw, grid.rows, grid.cols);
    if u32::try_from(gh.max(gw)).is_err() || gh.saturating_mul(gw).saturating_mul(c) > 1 << 31 {
        return Err(fail(format!("a {gw} x {gh} picture is too large")));
    }
    let mut canvas = vec![BORDER_VALUE; gh * gw * c];
    for (p, slot) in slots.iter().enumerate() {
        let Some(i) = slot else { continue };
        let tile = interleave(&pixels[i * per..(i + 1) * per], c, h * w);
        let (y0, x0) = (
            BORDER_PX + (p / grid.cols) * (th + BORDER_PX),
            BORDER_PX + (p % grid.cols) * (tw + BORDER_PX),
        );
        for y in 0..th {
            let row = (y0 + y) * gw;
            for x in 0..tw {
                let src = ((y / grid.scale) * w + x / grid.scale) * c;
                let dst = (row + x0 + x) * c;
                canvas[dst..dst + c].copy_from_slice(&tile[src..src + c]);
            }
        }
    }
    let png = encode_png(&canvas, gw, gh, c).map_err(fail)?;
    write_atomic(path, &png)
}

/// One CHW image of [0, 1] floats as interleaved 8-bit pixels (HWC).
fn interleave(chw: &[f32], c: usize, plane: usize) -> Vec<u8> {
    let mut out = vec![0u8; chw.len()];
    for (ch, values) in chw.chunks_exact(plane).enumerate() {
        for (q, &v) in values.iter().enumerate() {
            out[q * c + ch] = to_byte(v);
        }
    }
    out
}

/// [0, 1] to 0..=255, rounding; out-of-range values clamp, NaN shows black.
fn to_byte(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

pub(crate) fn encode_png(bytes: &[u8], w: usize, h: usize, c: usize) -> Result<Vec<u8>, String> {
    let colour = match c {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => return Err(format!("cannot write {c}-channel images as PNG")),
    };
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(bytes, w as u32, h as u32, colour)
        .map_err(|e| format!("encoding PNG: {e}"))?;
    Ok(out)
}

/// Whether `normalization` can de-normalise images of this shape.
fn fits(normalization: &Normalization, [c, h, w]: [usize; 3]) -> bool {
    match normalization {
        Normalization::MeanStd { mean, .. } => mean.len() == c,
        Normalization::Zca { mean, .. } => mean.len() == c * h * w,
    }
}

/// The first half of showing images, on the device: de-normalised when the normalisation
/// fits their shape, as stored when it does not (HaBa's one-channel bases of colour data).
/// Read the tensor back (at once, or awaited in a browser) and give its values to
/// [`display_values`].
pub fn display_tensor(
    images: Tensor<4>,
    normalization: &Normalization,
) -> Result<DisplayTensor, String> {
    let [_, c, h, w] = images.dims();
    if fits(normalization, [c, h, w]) {
        let pixels = normalization
            .invert(images)
            .map_err(|e| format!("de-normalising: {e}"))?;
        Ok(DisplayTensor {
            pixels,
            de_normalised: true,
        })
    } else if c == 1 {
        Ok(DisplayTensor {
            pixels: images,
            de_normalised: false,
        })
    } else {
        Err(format!(
            "{c}-channel images do not fit the dataset's normalisation"
        ))
    }
}

/// Images ready to be read back for display (see [`display_tensor`]).
pub struct DisplayTensor {
    pub pixels: Tensor<4>,
    /// False for values as stored: they have no true colour and are always stretched.
    pub de_normalised: bool,
}

/// The second half: the values read back from a [`DisplayTensor`] as [0, 1] floats in
/// `display`, CHW image after image.
pub fn display_values(
    mut values: Vec<f32>,
    [c, h, w]: [usize; 3],
    de_normalised: bool,
    display: Display,
) -> Vec<f32> {
    match display {
        Display::TrueColour if de_normalised => {
            values.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0))
        }
        Display::TrueColour => values.chunks_mut(h * w).for_each(stretch),
        Display::Stretch => values.chunks_mut(c * h * w).for_each(stretch),
    }
    values
}

/// Maps a tile's values linearly onto [0, 1] (a flat tile becomes mid grey).
fn stretch(tile: &mut [f32]) {
    let (lo, hi) = tile
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo;
    for v in tile {
        *v = if range > 0.0 && range.is_finite() {
            (*v - lo) / range
        } else {
            0.5
        };
    }
}

/// Pixels of every basis through hallucinator `j` (the bases themselves without
/// hallucinators), CHW image after image.
fn hallucinated_pixels(
    artifact: &Artifact,
    j: usize,
    display: Display,
) -> Result<Vec<f32>, String> {
    let f = &artifact.factorization;
    let images = f
        .images(f.bases.clone(), &vec![j; f.len()])
        .map_err(|e| e.to_string())?;
    displayed(images, &artifact.normalization, display)
}

/// Images (normalised, `[N, C, H, W]`) as [0, 1] floats in `display`, CHW image after
/// image, read back at once (a browser awaits [`display_tensor`]'s read instead).
pub fn displayed(
    images: Tensor<4>,
    normalization: &Normalization,
    display: Display,
) -> Result<Vec<f32>, String> {
    let [_, c, h, w] = images.dims();
    let shown = display_tensor(images, normalization)?;
    let values = shown
        .pixels
        .try_to_vec_as::<f32>()
        .map_err(|e| format!("reading images from the device: {e}"))?;
    Ok(display_values(
        values,
        [c, h, w],
        shown.de_normalised,
        display,
    ))
}

/// The bases of each class, in order: entry `c` lists the indices of class c's bases.
fn bases_by_class(artifact: &Artifact) -> Result<Vec<Vec<usize>>, String> {
    let classes = artifact.meta.classes.len();
    let mut by_class = vec![Vec::new(); classes];
    for (i, &label) in artifact.factorization.labels.iter().enumerate() {
        by_class
            .get_mut(label as usize)
            .ok_or_else(|| format!("label {label} but only {classes} class names"))?
            .push(i);
    }
    Ok(by_class)
}

fn report_error(path: &Path, reason: String) -> Error {
    Error::Artifact {
        path: path.to_path_buf(),
        reason,
    }
}

pub mod compare;
pub mod curves;
pub mod layout;
#[cfg(not(target_arch = "wasm32"))]
pub mod plot;
pub(crate) mod run_dir;
mod schema;

pub use run_dir::{
    BASES_PNG, CHECKPOINT, COMPARE_JSON, COMPARE_PNG, CONFIG_TOML, CURVES_PNG, HALLUCINATED_PNG,
    METRICS_FILE, REPORT_JSON, RunDir,
};
pub use schema::{Distillation, EvaluatedSet, REPORT_VERSION, Report};

#[cfg(test)]
mod tests;
