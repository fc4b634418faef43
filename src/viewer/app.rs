//! The window: panels, grids, plots, live reloading and PNG export. What to draw comes
//! from `model.rs`; this file only draws it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use burn::tensor::Device;
use eframe::egui::{self, Color32, ColorImage, Sense, TextureHandle, TextureOptions, Vec2};
use egui_plot::{Legend, Line, Plot, Points};

use super::model::{self, Curves, Display, Filter, Rendered, Rgba, Source, Tile};
use super::{Options, View};
use crate::artifact::Artifact;
use crate::data::Split;
use crate::error::Result;
use crate::report::Report;

/// How often live mode looks at the run's files.
const POLL: Duration = Duration::from_millis(1000);
/// Frames drawn before an automatic screenshot (textures and layout have settled).
const SCREENSHOT_AFTER_FRAMES: u64 = 4;

/// Modification times of the files a view reads, to notice new ones.
#[derive(Clone, Debug, Default, PartialEq)]
struct Stamps {
    artifact: Option<SystemTime>,
    metrics: Option<SystemTime>,
    report: Option<SystemTime>,
}

impl Stamps {
    fn of(source: &Source) -> Self {
        Self {
            artifact: model::modified(&source.artifact),
            metrics: source.metrics().and_then(|p| model::modified(&p)),
            report: source.report().and_then(|p| model::modified(&p)),
        }
    }
}

struct Textures {
    bases: Vec<TextureHandle>,
    matrix: Vec<TextureHandle>,
}

/// The what-if view's choices and results.
#[derive(Default)]
struct WhatIf {
    class: u16,
    in_class: usize,
    /// The chosen basis through every hallucinator.
    row: Vec<TextureHandle>,
    real_index: usize,
    /// The test set, loaded on first use (`Err` says why it is not available).
    test: Option<std::result::Result<Split, String>>,
    /// The real image, its label, and it through every hallucinator.
    real: Option<(TextureHandle, u16, Vec<TextureHandle>)>,
    dirty: bool,
}

pub struct App {
    options: Options,
    source: Source,
    device: Device,
    /// The adapter's name, for the matrix view's caption.
    adapter: String,
    artifact: Artifact,
    textures: Textures,
    /// True colour or stretched per image (the grids and the what-if row).
    display: Display,
    curves: Curves,
    report: Option<Report>,
    stamps: Stamps,
    last_poll: Instant,
    reloads: usize,
    view: View,
    filter: Filter,
    zoom: f32,
    what_if: WhatIf,
    status: Arc<std::sync::Mutex<String>>,
    frames: u64,
    tiles_drawn: usize,
    screenshot_requested: bool,
}

fn texture(ctx: &egui::Context, name: String, image: &Rgba) -> TextureHandle {
    ctx.load_texture(
        name,
        ColorImage::from_rgba_unmultiplied(image.size, &image.bytes),
        TextureOptions::NEAREST,
    )
}

fn textures_of(ctx: &egui::Context, artifact: &Artifact, display: Display) -> Result<Textures> {
    let rendered = Rendered::new(artifact, display)?;
    Ok(Textures {
        bases: rendered
            .bases
            .iter()
            .enumerate()
            .map(|(i, im)| texture(ctx, format!("basis-{i}"), im))
            .collect(),
        matrix: rendered
            .matrix
            .iter()
            .enumerate()
            .map(|(i, im)| texture(ctx, format!("image-{i}"), im))
            .collect(),
    })
}

fn read_report(source: &Source) -> Option<Report> {
    let text = std::fs::read_to_string(source.report()?).ok()?;
    Report::from_json(&text).ok()
}

fn read_curves(source: &Source) -> Curves {
    source
        .metrics()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| Curves::parse(&t))
        .unwrap_or_default()
}

impl App {
    pub fn new(
        ctx: &egui::Context,
        options: Options,
        source: Source,
        device: Device,
        adapter: String,
        artifact: Artifact,
    ) -> Result<Self> {
        let textures = textures_of(ctx, &artifact, options.display)?;
        let zoom = default_zoom(&artifact);
        Ok(Self {
            display: options.display,
            view: options.view,
            stamps: Stamps::of(&source),
            curves: read_curves(&source),
            report: read_report(&source),
            options,
            source,
            device,
            adapter,
            artifact,
            textures,
            last_poll: Instant::now(),
            reloads: 0,
            filter: Filter::default(),
            zoom,
            what_if: WhatIf {
                dirty: true,
                ..WhatIf::default()
            },
            status: Arc::default(),
            frames: 0,
            tiles_drawn: 0,
            screenshot_requested: false,
        })
    }

    fn set_status(&self, s: impl Into<String>) {
        *self.status.lock().expect("status lock") = s.into();
    }

    /// Live mode: reloads whatever changed on disk since the last look.
    fn poll(&mut self, ctx: &egui::Context) {
        if !self.options.live || self.last_poll.elapsed() < POLL {
            return;
        }
        self.last_poll = Instant::now();
        let now = Stamps::of(&self.source);
        if now.artifact != self.stamps.artifact {
            match Artifact::load(&self.source.artifact, &self.device)
                .and_then(|a| Ok((textures_of(ctx, &a, self.display)?, a)))
            {
                Ok((textures, artifact)) => {
                    self.textures = textures;
                    self.artifact = artifact;
                    self.what_if.dirty = true;
                    self.reloads += 1;
                    self.set_status(format!("reloaded the artifact ({} times)", self.reloads));
                }
                // A checkpoint being written is replaced atomically, so this is a real
                // problem; keep showing the last good one and try again next time.
                Err(e) => self.set_status(format!("reloading failed: {e}")),
            }
        }
        if now.metrics != self.stamps.metrics {
            self.curves = read_curves(&self.source);
        }
        if now.report != self.stamps.report {
            self.report = read_report(&self.source);
        }
        self.stamps = now;
    }

    fn classes(&self) -> &[String] {
        &self.artifact.meta.classes
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        let meta = &self.artifact.meta;
        let f = &self.artifact.factorization;
        let m = self.artifact.factorization.hallucinator_count();
        ui.heading("haba view");
        ui.label(format!("{} on {}", meta.method, meta.dataset));
        ui.label(format!(
            "{} bases of {}x{}x{}, {} classes",
            f.len(),
            f.bases.dims()[1],
            meta.image.height,
            meta.image.width,
            meta.classes.len()
        ));
        ui.label(if m > 0 {
            format!("{m} hallucinators: {} images", m * f.len())
        } else {
            "no hallucinators (plain images)".to_string()
        });
        if let Some(lr) = self.artifact.lr {
            ui.label(format!("learned lr {lr:.4}"));
        }
        ui.separator();

        let class_text = |c: Option<u16>| match c {
            None => "all classes".to_string(),
            Some(c) => format!("{c}: {}", meta.classes.get(c as usize).map_or("?", |s| s)),
        };
        egui::ComboBox::from_label("class")
            .selected_text(class_text(self.filter.class))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut self.filter.class, None, class_text(None));
                for c in 0..meta.classes.len() as u16 {
                    ui.selectable_value(&mut self.filter.class, Some(c), class_text(Some(c)));
                }
            });
        if m > 0 {
            let hal_text = |h: Option<usize>| h.map_or("all".to_string(), |h| format!("H{h}"));
            egui::ComboBox::from_label("hallucinator")
                .selected_text(hal_text(self.filter.hallucinator))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.filter.hallucinator, None, hal_text(None));
                    for h in 0..m {
                        ui.selectable_value(
                            &mut self.filter.hallucinator,
                            Some(h),
                            hal_text(Some(h)),
                        );
                    }
                });
        }
        ui.add(egui::Slider::new(&mut self.zoom, 1.0..=16.0).text("zoom"));
        let before = self.display;
        ui.horizontal(|ui| {
            for d in Display::ALL {
                ui.radio_value(&mut self.display, d, d.describe());
            }
        });
        if self.display != before {
            match textures_of(ui.ctx(), &self.artifact, self.display) {
                Ok(textures) => {
                    self.textures = textures;
                    self.what_if.dirty = true;
                }
                Err(e) => self.set_status(format!("redrawing failed: {e}")),
            }
        }
        ui.separator();
        ui.checkbox(&mut self.options.live, "live: follow new checkpoints");
        if ui.button("export view to PNG").clicked() {
            self.export(ui.ctx(), None);
        }
        ui.separator();
        ui.small(self.source.artifact.display().to_string());
        let status = self.status.lock().expect("status lock").clone();
        if !status.is_empty() {
            ui.small(status);
        }
    }

    /// Saves the next frame to `path` (default: `view-<view>-<time>.png` next to the run).
    fn export(&mut self, ctx: &egui::Context, path: Option<PathBuf>) {
        let path = path.unwrap_or_else(|| {
            let dir = self
                .source
                .run_dir
                .clone()
                .or_else(|| self.source.artifact.parent().map(PathBuf::from))
                .unwrap_or_default();
            let secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            dir.join(format!("view-{}-{secs}.png", self.view.name()))
        });
        let status = self.status.clone();
        let close = self.options.screenshot.is_some();
        let ctx2 = ctx.clone();
        self.set_status(format!("exporting {}", path.display()));
        ctx.request_screenshot(move |image| {
            let message = match save_png(&path, &image) {
                Ok(()) => format!("wrote {}", path.display()),
                Err(e) => format!("could not write {}: {e}", path.display()),
            };
            eprintln!("{message}");
            *status.lock().expect("status lock") = message;
            if close {
                ctx2.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            ctx2.request_repaint();
        });
    }

    /// Draws a grid of tiles with a label per row; returns the clicked tile.
    fn grid(
        &mut self,
        ui: &mut egui::Ui,
        id: &str,
        rows: &[Vec<Tile>],
        row_label: impl Fn(&Tile) -> String,
    ) -> Option<Tile> {
        let n = self.artifact.factorization.len();
        let [w, h] = [
            self.artifact.meta.image.width,
            self.artifact.meta.image.height,
        ];
        let size = Vec2::new(w as f32, h as f32) * self.zoom;
        let mut clicked = None;
        let mut drawn = 0;
        egui::ScrollArea::both().show(ui, |ui| {
            egui::Grid::new(id).spacing([2.0, 2.0]).show(ui, |ui| {
                for row in rows {
                    if let Some(first) = row.first() {
                        ui.label(row_label(first));
                    }
                    for t in row {
                        let textures = if t.hallucinator.is_some() {
                            &self.textures.matrix
                        } else {
                            &self.textures.bases
                        };
                        let Some(tex) = textures.get(t.image_index(n)) else {
                            continue;
                        };
                        let r = ui
                            .add(egui::Image::from_texture((tex.id(), size)).sense(Sense::click()))
                            .on_hover_text(t.describe(&self.artifact.meta.classes));
                        drawn += 1;
                        if r.clicked() {
                            clicked = Some(*t);
                        }
                    }
                    ui.end_row();
                }
            });
        });
        self.tiles_drawn = drawn;
        clicked
    }

    fn matrix_view(&mut self, ui: &mut egui::Ui) {
        let m = self.artifact.factorization.hallucinator_count();
        let rows = model::matrix_grid(&self.artifact.factorization.labels, m, self.filter);
        ui.label(format!(
            "hallucinator x basis: {} images generated on {} from the stored factorization \
             (click one to open it in what-if)",
            model::tile_count(&rows),
            self.adapter
        ));
        let label = |t: &Tile| t.hallucinator.map_or("bases".into(), |j| format!("H{j}"));
        if let Some(t) = self.grid(ui, "matrix", &rows, label) {
            self.open_what_if(t);
        }
    }

    fn bases_view(&mut self, ui: &mut egui::Ui) {
        let rows = model::bases_grid(
            &self.artifact.factorization.labels,
            self.classes().len(),
            self.filter,
        );
        ui.label(format!("bases per class: {}", model::tile_count(&rows)));
        let classes = self.classes().to_vec();
        let label = move |t: &Tile| classes.get(t.label as usize).cloned().unwrap_or_default();
        if let Some(t) = self.grid(ui, "bases", &rows, label) {
            self.open_what_if(t);
        }
    }

    fn open_what_if(&mut self, t: Tile) {
        self.what_if.class = t.label;
        self.what_if.in_class = t.in_class;
        self.what_if.dirty = true;
        self.view = View::WhatIf;
    }

    /// Recomputes the what-if rows (on the device) after a choice changed.
    fn refresh_what_if(&mut self, ctx: &egui::Context) {
        if !self.what_if.dirty {
            return;
        }
        self.what_if.dirty = false;
        let labels = &self.artifact.factorization.labels;
        let of_class: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] == self.what_if.class)
            .collect();
        self.what_if.row.clear();
        if let Some(&basis) =
            of_class.get(self.what_if.in_class.min(of_class.len().saturating_sub(1)))
        {
            let image = self
                .artifact
                .factorization
                .bases
                .clone()
                .narrow(0, basis, 1);
            match model::what_if(&self.artifact, image, self.display) {
                Ok(row) => {
                    self.what_if.row = row
                        .iter()
                        .enumerate()
                        .map(|(j, im)| texture(ctx, format!("whatif-{j}"), im))
                        .collect()
                }
                Err(e) => self.set_status(format!("what-if failed: {e}")),
            }
        }
        if self.what_if.test.is_none() {
            self.what_if.test = Some(
                model::load_dataset(&self.artifact.meta.dataset, self.options.data_dir.clone())
                    .map(|d| d.test)
                    .map_err(|e| e.to_string()),
            );
        }
        self.what_if.real = None;
        if let Some(Ok(test)) = &self.what_if.test {
            let result = model::real_image(&self.artifact, test, self.what_if.real_index).and_then(
                |(image, shown, label)| {
                    Ok((
                        shown,
                        label,
                        model::what_if(&self.artifact, image, self.display)?,
                    ))
                },
            );
            match result {
                Ok((shown, label, row)) => {
                    self.what_if.real = Some((
                        texture(ctx, "real".into(), &shown),
                        label,
                        row.iter()
                            .enumerate()
                            .map(|(j, im)| texture(ctx, format!("whatif-real-{j}"), im))
                            .collect(),
                    ))
                }
                Err(e) => self.set_status(format!("real image: {e}")),
            }
        }
    }

    fn what_if_view(&mut self, ui: &mut egui::Ui) {
        self.refresh_what_if(ui.ctx());
        let classes = self.classes().to_vec();
        let per_class = self
            .artifact
            .factorization
            .labels
            .iter()
            .filter(|&&l| l == self.what_if.class)
            .count();
        let before = (
            self.what_if.class,
            self.what_if.in_class,
            self.what_if.real_index,
        );
        ui.horizontal(|ui| {
            egui::ComboBox::from_label("class of the basis")
                .selected_text(
                    classes
                        .get(self.what_if.class as usize)
                        .cloned()
                        .unwrap_or_default(),
                )
                .show_ui(ui, |ui| {
                    for (c, name) in classes.iter().enumerate() {
                        ui.selectable_value(&mut self.what_if.class, c as u16, name.as_str());
                    }
                });
            if per_class > 1 {
                ui.add(
                    egui::Slider::new(&mut self.what_if.in_class, 0..=per_class - 1)
                        .text("basis of the class"),
                );
            }
        });
        if before
            != (
                self.what_if.class,
                self.what_if.in_class,
                self.what_if.real_index,
            )
        {
            self.what_if.dirty = true;
        }
        let size = Vec2::new(
            self.artifact.meta.image.width as f32,
            self.artifact.meta.image.height as f32,
        ) * self.zoom;
        let mut drawn = 0;
        ui.label("every hallucinator on this basis:");
        ui.horizontal_wrapped(|ui| {
            for (j, tex) in self.what_if.row.iter().enumerate() {
                ui.add(egui::Image::from_texture((tex.id(), size)).sense(Sense::hover()))
                    .on_hover_text(format!("hallucinator {j}"));
                drawn += 1;
            }
        });
        ui.separator();
        match &self.what_if.test {
            Some(Err(e)) => {
                ui.label(format!(
                    "no real images: the dataset `{}` could not be loaded ({e})",
                    self.artifact.meta.dataset
                ));
            }
            Some(Ok(test)) => {
                let n = test.len();
                let mut index = self.what_if.real_index;
                ui.add(egui::Slider::new(&mut index, 0..=n.saturating_sub(1)).text("test image"));
                if index != self.what_if.real_index {
                    self.what_if.real_index = index;
                    self.what_if.dirty = true;
                }
                if let Some((tex, label, row)) = &self.what_if.real {
                    ui.label(format!(
                        "a real test image ({}) and every hallucinator on it:",
                        classes.get(*label as usize).map_or("?", |s| s)
                    ));
                    ui.horizontal_wrapped(|ui| {
                        ui.add(egui::Image::from_texture((tex.id(), size)))
                            .on_hover_text("the real image");
                        ui.separator();
                        for (j, t) in row.iter().enumerate() {
                            ui.add(egui::Image::from_texture((t.id(), size)).sense(Sense::hover()))
                                .on_hover_text(format!("hallucinator {j}"));
                            drawn += 1;
                        }
                    });
                }
            }
            None => {}
        }
        self.tiles_drawn = drawn;
    }

    fn curves_view(&mut self, ui: &mut egui::Ui) {
        let c = &self.curves;
        if self.source.run_dir.is_none() {
            ui.label("no run directory: open the run's directory to see its curves");
            return;
        }
        if c.is_empty() {
            ui.label("metrics.jsonl has no records yet");
            return;
        }
        if let Some(s) = c.seconds {
            ui.label(format!("{} logged iterations, {s:.0} s", c.objective.len()));
        }
        let plots = 3.0 + c.scalars.len() as f32;
        let height = (ui.available_height() / plots - 20.0).max(120.0);
        ui.label("objective (the base method's loss)");
        Plot::new("objective")
            .height(height)
            .legend(Legend::default())
            .show(ui, |p| p.line(Line::new("objective", c.objective.clone())));
        ui.label("diversity and adversary (contrastive terms)");
        Plot::new("terms")
            .height(height)
            .legend(Legend::default())
            .show(ui, |p| {
                p.line(Line::new("diversity", c.diversity.clone()));
                p.line(Line::new("adversary", c.adversary.clone()));
            });
        ui.label("evaluation accuracy (mean over networks)");
        Plot::new("accuracy")
            .height(height)
            .legend(Legend::default())
            .include_y(0.0)
            .include_y(1.0)
            .show(ui, |p| {
                p.line(Line::new("accuracy", c.accuracy.clone()));
                p.points(Points::new("evaluations", c.accuracy.clone()).radius(3.0));
            });
        for (name, series) in &c.scalars {
            ui.label(crate::report::curves::title(name));
            Plot::new(name)
                .height(height)
                .legend(Legend::default())
                .show(ui, |p| p.line(Line::new(name.as_str(), series.clone())));
        }
    }

    fn report_view(&mut self, ui: &mut egui::Ui) {
        let s = self.artifact.storage();
        egui::Grid::new("storage").striped(true).show(ui, |ui| {
            for (k, v) in [
                ("base floats", s.base_floats.to_string()),
                ("hallucinator floats", s.hallucinator_floats.to_string()),
                ("total floats", s.total_floats.to_string()),
                ("image equivalents", format!("{:.2}", s.image_equivalents)),
                (
                    "image equivalents per class",
                    format!("{:.3}", s.image_equivalents_per_class),
                ),
            ] {
                ui.label(k);
                ui.monospace(v);
                ui.end_row();
            }
            for set in self.report.iter().flat_map(|r| &r.sets) {
                ui.label(format!("test accuracy, {}", set.name));
                ui.monospace(format!("{} %", set.result.percent()));
                ui.end_row();
            }
        });
        ui.separator();
        match &self.report {
            Some(r) => {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    ui.monospace(r.to_json());
                });
            }
            None => {
                ui.label("no report.json (yet)");
            }
        }
    }
}

impl eframe::App for App {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll(ctx);
        if self.options.live {
            ctx.request_repaint_after(POLL);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frames += 1;
        egui::Panel::top("views").show(ui, |ui| {
            ui.horizontal(|ui| {
                for v in View::ALL {
                    ui.selectable_value(&mut self.view, v, v.title());
                }
            });
        });
        egui::Panel::left("controls")
            .resizable(true)
            .default_size(220.0)
            .show(ui, |ui| self.controls(ui));
        egui::CentralPanel::default().show(ui, |ui| match self.view {
            View::Matrix => self.matrix_view(ui),
            View::Bases => self.bases_view(ui),
            View::WhatIf => self.what_if_view(ui),
            View::Curves => self.curves_view(ui),
            View::Report => self.report_view(ui),
        });
        if let Some(path) = self.options.screenshot.clone()
            && !self.screenshot_requested
            && self.frames >= SCREENSHOT_AFTER_FRAMES
        {
            self.screenshot_requested = true;
            // The line the window test reads.
            println!("view {} drew {} tiles", self.view.name(), self.tiles_drawn);
            self.export(ui.ctx(), Some(path));
        }
        if self.options.screenshot.is_some() {
            ui.ctx().request_repaint();
        }
    }
}

fn default_zoom(artifact: &Artifact) -> f32 {
    // About 64 pixels a tile, as the run's PNGs.
    (64.0 / artifact.meta.image.height.max(1) as f32).clamp(1.0, 16.0)
}

fn save_png(path: &std::path::Path, image: &ColorImage) -> std::result::Result<(), String> {
    let [w, h] = image.size;
    let bytes: Vec<u8> = image
        .pixels
        .iter()
        .flat_map(|c: &Color32| c.to_srgba_unmultiplied())
        .collect();
    let img = image::RgbaImage::from_raw(w as u32, h as u32, bytes)
        .ok_or("the screenshot has the wrong number of pixels")?;
    img.save(path).map_err(|e| e.to_string())
}
