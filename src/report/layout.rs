//! How grids of tiles are laid out (the bases view, the hallucinator x basis matrix) and
//! images as RGBA bytes: shared by the desktop viewer and the browser page, with no
//! window or device of its own.

/// One tile of a grid: an image and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Index of the basis in the artifact (class-major).
    pub basis: usize,
    /// Its position among its class's bases.
    pub in_class: usize,
    pub label: u16,
    /// The hallucinator the basis went through; `None` for the basis itself.
    pub hallucinator: Option<usize>,
}

impl Tile {
    /// Index of the tile's image among all hallucinated images (hallucinator-major, as
    /// [`crate::haba::Factorization::all_images`] orders them) or among the bases.
    pub fn image_index(&self, bases: usize) -> usize {
        match self.hallucinator {
            Some(j) => j * bases + self.basis,
            None => self.basis,
        }
    }

    /// The hover text: label and indices.
    pub fn describe(&self, classes: &[String]) -> String {
        let class = classes.get(self.label as usize).map_or("?", String::as_str);
        let mut s = format!(
            "class {} ({class})\nbasis {} (#{} of its class)",
            self.label, self.basis, self.in_class
        );
        if let Some(j) = self.hallucinator {
            s.push_str(&format!("\nhallucinator {j}"));
        }
        s
    }
}

/// What the grids show: one class or all, one hallucinator or all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub class: Option<u16>,
    pub hallucinator: Option<usize>,
}

/// The bases with their position in their class, in artifact order, keeping `class`.
fn bases_of(labels: &[u16], class: Option<u16>) -> Vec<Tile> {
    let mut seen = std::collections::HashMap::<u16, usize>::new();
    labels
        .iter()
        .enumerate()
        .map(|(basis, &label)| {
            let n = seen.entry(label).or_default();
            *n += 1;
            Tile {
                basis,
                in_class: *n - 1,
                label,
                hallucinator: None,
            }
        })
        .filter(|t| class.is_none_or(|c| c == t.label))
        .collect()
}

/// The bases view: one row per class (only the filtered one), its bases left to right.
pub fn bases_grid(labels: &[u16], classes: usize, filter: Filter) -> Vec<Vec<Tile>> {
    let tiles = bases_of(labels, filter.class);
    (0..classes as u16)
        .filter(|c| filter.class.is_none_or(|f| f == *c))
        .map(|c| tiles.iter().copied().filter(|t| t.label == c).collect())
        .filter(|row: &Vec<Tile>| !row.is_empty())
        .collect()
}

/// The hallucinator x basis matrix: one row per hallucinator (only the filtered one),
/// every basis (of the filtered class) left to right. Without hallucinators (`count`
/// 0, a plain DM/MTT set) the bases are the images: one row of them.
pub fn matrix_grid(labels: &[u16], count: usize, filter: Filter) -> Vec<Vec<Tile>> {
    let bases = bases_of(labels, filter.class);
    if count == 0 {
        return vec![bases];
    }
    (0..count)
        .filter(|j| filter.hallucinator.is_none_or(|f| f == *j))
        .map(|j| {
            bases
                .iter()
                .map(|t| Tile {
                    hallucinator: Some(j),
                    ..*t
                })
                .collect()
        })
        .collect()
}

/// Number of tiles of a grid.
pub fn tile_count(grid: &[Vec<Tile>]) -> usize {
    grid.iter().map(Vec::len).sum()
}

/// An image ready for a texture or a PNG: `size` is `[width, height]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgba {
    pub size: [usize; 2],
    pub bytes: Vec<u8>,
}

/// [0, 1] floats of `[N, C, H, W]` images (C = 1 or 3, CHW image after image, as
/// [`crate::report::displayed`] gives them) as RGBA images.
pub fn rgba_images(values: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<Rgba> {
    let plane = h * w;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    (0..n)
        .map(|i| {
            let img = &values[i * c * plane..(i + 1) * c * plane];
            let mut bytes = Vec::with_capacity(plane * 4);
            for p in 0..plane {
                let (r, g, b) = if c >= 3 {
                    (img[p], img[plane + p], img[2 * plane + p])
                } else {
                    (img[p], img[p], img[p])
                };
                bytes.extend_from_slice(&[byte(r), byte(g), byte(b), 255]);
            }
            Rgba {
                size: [w, h],
                bytes,
            }
        })
        .collect()
}

/// A grid drawn into one picture, `gap` transparent pixels between tiles; `image_of`
/// gives each tile's image (all the same size). Rows may differ in length.
pub fn compose<'a>(grid: &[Vec<Tile>], image_of: impl Fn(&Tile) -> &'a Rgba, gap: usize) -> Rgba {
    let Some(first) = grid.iter().flatten().next() else {
        return Rgba {
            size: [0, 0],
            bytes: Vec::new(),
        };
    };
    let [tw, th] = image_of(first).size;
    let cols = grid.iter().map(Vec::len).max().unwrap_or(0);
    let width = cols * (tw + gap) - gap;
    let height = grid.len() * (th + gap) - gap;
    let mut bytes = vec![0u8; width * height * 4];
    for (r, row) in grid.iter().enumerate() {
        for (col, tile) in row.iter().enumerate() {
            let img = image_of(tile);
            for y in 0..th {
                let dst = ((r * (th + gap) + y) * width + col * (tw + gap)) * 4;
                bytes[dst..dst + tw * 4].copy_from_slice(&img.bytes[y * tw * 4..(y + 1) * tw * 4]);
            }
        }
    }
    Rgba {
        size: [width, height],
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x2-pixel tile filled with `v`.
    fn tile(v: u8) -> Rgba {
        Rgba {
            size: [1, 2],
            bytes: [v, v, v, 255].repeat(2),
        }
    }

    #[test]
    fn compose_places_every_tile_with_gaps_and_leaves_short_rows_transparent() {
        // Two hallucinators over two bases of classes 0 and 1, plus a one-tile row.
        let mut grid = matrix_grid(&[0, 1], 2, Filter::default());
        grid.push(vec![grid[0][0]]);
        let images: Vec<Rgba> = (0..4).map(|i| tile(10 * (i + 1))).collect();
        let pic = compose(&grid, |t| &images[t.image_index(2)], 1);
        // 2 columns of width 1 with a gap of 1; 3 rows of height 2 with gaps of 1.
        assert_eq!(pic.size, [3, 8]);
        let at = |x: usize, y: usize| pic.bytes[(y * 3 + x) * 4];
        let alpha = |x: usize, y: usize| pic.bytes[(y * 3 + x) * 4 + 3];
        // Row j, column b shows basis b through hallucinator j: image j * 2 + b.
        assert_eq!([at(0, 0), at(2, 1), at(0, 3), at(2, 4)], [10, 20, 30, 40]);
        assert_eq!([at(0, 6), at(0, 7)], [10, 10]);
        // Gaps and the missing tile of the short row stay transparent.
        assert_eq!([alpha(1, 0), alpha(0, 2), alpha(2, 6)], [0, 0, 0]);
        assert_eq!(tile_count(&grid), 5);
    }

    #[test]
    fn rgba_images_copy_grey_to_every_channel_and_keep_colour_planes() {
        let grey = rgba_images(&[0.0, 1.0], [1, 1, 1, 2]);
        assert_eq!(grey[0].bytes, vec![0, 0, 0, 255, 255, 255, 255, 255]);
        let colour = rgba_images(&[1.0, 0.5, 0.0], [1, 3, 1, 1]);
        assert_eq!(colour[0].bytes, vec![255, 128, 0, 255]);
        assert_eq!(compose(&[], |_| &colour[0], 2).size, [0, 0]);
    }
}
