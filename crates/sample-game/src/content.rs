//! Synthetic file contents with realistic compressibility.
//!
//! Four kinds of content, each tuned against gzip -6 (see the unit tests and the crate docs for
//! measured ratios):
//! - [`Kind::Code`]: ELF-like executables and shared libraries, about 3:1;
//! - [`Kind::Texture`]: DDS-like textures (and meshes/animations), about 2.5:1;
//! - [`Kind::Audio`]: RIFF/Wwise-like audio, incompressible;
//! - [`Kind::Text`]: scripts, XML, JSON, configs and shader sources, about 5:1.
//!
//! Binary kinds are built like the output of an LZ77 decoder: runs of random literals
//! interleaved with copies of earlier output from within deflate's 32 KiB window. The ratio of
//! literal bytes to copied bytes sets the compression ratio, and there is no repetition at any
//! longer range, so no chunk of one file reappears in another (no accidental deduplication).
//! Text is produced line by line from templates over a seeded vocabulary with a skewed word
//! distribution.

use crate::rng::Rng;

/// What a file or pak entry holds; decides how its bytes are generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// Machine code and shared libraries (~3:1 with gzip -6).
    Code,
    /// Textures, meshes, animations (~2.5:1).
    Texture,
    /// Compressed audio (incompressible).
    Audio,
    /// Human-written text in one of several styles (~5:1).
    Text(TextStyle),
}

/// The flavour of a text file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TextStyle {
    Lua,
    Xml,
    Json,
    Cfg,
    Shader,
}

impl Kind {
    /// The short name used in reports: `code`, `texture`, `audio` or `text`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Code => "code",
            Kind::Texture => "texture",
            Kind::Audio => "audio",
            Kind::Text(_) => "text",
        }
    }

    /// The kind of a pak entry or file, from its name's extension.
    pub(crate) fn for_name(name: &str) -> Kind {
        let base = name.rsplit('/').next().unwrap_or(name);
        let ext = match base.rsplit_once('.') {
            Some((_, e)) => e.to_ascii_lowercase(),
            None => String::new(),
        };
        match ext.as_str() {
            "dds" | "ctc" | "tif" | "cgf" | "chr" | "skin" | "caf" | "dba" | "i_caf" | "fnt"
            | "ttf" | "dat" | "tex" | "cax" => Kind::Texture,
            "wem" | "bnk" | "ogg" | "wav" => Kind::Audio,
            "lua" | "txt" | "csv" | "ini" => Kind::Text(TextStyle::Lua),
            "xml" | "mtl" | "cdf" | "ent" | "uicanvas" | "lyr" | "adb" | "sprite" => {
                Kind::Text(TextStyle::Xml)
            }
            "json" | "physmaterials" | "inputbindings" => Kind::Text(TextStyle::Json),
            "cfg" => Kind::Text(TextStyle::Cfg),
            "cfx" | "cfi" | "ext" | "hlsl" => Kind::Text(TextStyle::Shader),
            "so" | "fxcb" | "bin" | "2" | "5" | "56" => Kind::Code,
            _ if base.contains(".so.") => Kind::Code,
            _ => Kind::Texture,
        }
    }
}

/// The words text is built from, shared by all files of one repository (as identifiers are
/// shared across a real project's scripts).
pub(crate) struct Vocab {
    words: Vec<String>,
    caps: Vec<String>,
}

const CORE_WORDS: &[&str] = &[
    "player",
    "weapon",
    "spawn",
    "health",
    "damage",
    "team",
    "score",
    "vehicle",
    "projectile",
    "camera",
    "light",
    "entity",
    "component",
    "physics",
    "network",
    "replica",
    "session",
    "lobby",
    "match",
    "round",
    "level",
    "terrain",
    "water",
    "sound",
    "effect",
    "particle",
    "material",
    "texture",
    "shader",
    "animation",
    "input",
    "event",
    "handler",
    "state",
    "value",
    "target",
    "position",
    "rotation",
    "scale",
    "speed",
    "radius",
    "time",
    "count",
    "index",
    "name",
    "id",
    "enabled",
    "visible",
    "active",
    "owner",
    "controller",
    "manager",
    "system",
    "config",
    "bus",
    "request",
    "notify",
    "update",
    "tick",
    "reset",
    "start",
    "stop",
    "load",
    "save",
    "pickup",
    "ammo",
    "reload",
    "fire",
    "jump",
    "move",
    "turn",
    "aim",
    "shield",
    "boost",
    "mesh",
    "bone",
];

const ONSETS: &[&str] = &[
    "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br",
    "cr", "dr", "gr", "pr", "tr", "st", "sp", "sh", "ch", "th", "bl", "cl", "fl", "gl", "pl",
];
const NUCLEI: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"];
const CODAS: &[&str] = &[
    "", "", "", "n", "r", "s", "t", "l", "m", "x", "nd", "rt", "st", "ck",
];

impl Vocab {
    /// Builds the vocabulary of a repository from its seed.
    pub(crate) fn new(seed: u64) -> Vocab {
        let mut rng = Rng::derived(seed, &[b"vocab"]);
        let mut words: Vec<String> = CORE_WORDS.iter().map(|w| w.to_string()).collect();
        let mut seen: std::collections::HashSet<String> = words.iter().cloned().collect();
        while words.len() < 1200 {
            let syllables = rng.range(1, 3);
            let mut w = String::new();
            for _ in 0..syllables {
                let part: &&str = rng.pick(ONSETS);
                w.push_str(part);
                let part: &&str = rng.pick(NUCLEI);
                w.push_str(part);
                let part: &&str = rng.pick(CODAS);
                w.push_str(part);
            }
            if w.len() >= 3 && seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let caps = words
            .iter()
            .map(|w| {
                let mut c = w.clone();
                if let Some(f) = c.get_mut(0..1) {
                    f.make_ascii_uppercase();
                }
                c
            })
            .collect();
        Vocab { words, caps }
    }

    /// A word index with a Zipf-like skew (low indices much more frequent).
    #[inline]
    fn skewed(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        ((u * u * u * u) * self.words.len() as f64) as usize % self.words.len()
    }

    /// A lower-case word by index.
    pub(crate) fn word_at(&self, i: usize) -> &str {
        &self.words[i % self.words.len()]
    }

    /// A capitalised word by index.
    pub(crate) fn cap_at(&self, i: usize) -> &str {
        &self.caps[i % self.caps.len()]
    }

    /// A lower-case word drawn uniformly (for names, which should not all be "player").
    pub(crate) fn any(&self, rng: &mut Rng) -> &str {
        &self.words[rng.index(self.words.len())]
    }

    /// A lower-case word.
    pub(crate) fn word(&self, rng: &mut Rng) -> &str {
        &self.words[self.skewed(rng)]
    }

    /// A capitalised word.
    pub(crate) fn cap(&self, rng: &mut Rng) -> &str {
        &self.caps[self.skewed(rng)]
    }
}

/// Parameters of the LZ-like mixer: literal run lengths, copy lengths and maximum distance.
struct Mix {
    lit: (u64, u64),
    copy: (u64, u64),
    max_dist: usize,
}

/// Code: ~3:1 overall together with the string table.
const CODE_MIX: Mix = Mix {
    lit: (6, 30),
    copy: (8, 80),
    max_dist: 24_000,
};

/// Textures: ~2.5:1.
const TEXTURE_MIX: Mix = Mix {
    lit: (8, 33),
    copy: (8, 72),
    max_dist: 30_000,
};

/// Fills `out` with random literal runs interleaved with copies of earlier output.
fn fill_mix(rng: &mut Rng, out: &mut [u8], m: &Mix) {
    let n = out.len();
    let mut i = 0;
    while i < n {
        let lit = (rng.range(m.lit.0, m.lit.1) as usize).min(n - i);
        rng.fill(&mut out[i..i + lit]);
        i += lit;
        if i >= n {
            break;
        }
        let len = (rng.range(m.copy.0, m.copy.1) as usize).min(n - i);
        if i < 2 * len {
            continue;
        }
        let max_d = i.min(m.max_dist).max(len);
        let d = rng.range(len as u64, max_d as u64) as usize;
        out.copy_within(i - d..i - d + len, i);
        i += len;
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A 64-byte ELF64 header for an x86-64 shared object or executable of `size` bytes.
fn elf_header(rng: &mut Rng, size: u64, exec: bool) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    h.extend_from_slice(&[0; 8]);
    put_u16(&mut h, if exec { 2 } else { 3 }); // e_type
    put_u16(&mut h, 0x3e); // e_machine: x86-64
    put_u32(&mut h, 1); // e_version
    put_u64(&mut h, 0x40_0000 + (rng.below(0x1000) << 4)); // e_entry
    put_u64(&mut h, 64); // e_phoff
    put_u64(&mut h, size.saturating_sub(64 * 32)); // e_shoff
    put_u32(&mut h, 0); // e_flags
    put_u16(&mut h, 64); // e_ehsize
    put_u16(&mut h, 56); // e_phentsize
    put_u16(&mut h, 9); // e_phnum
    put_u16(&mut h, 64); // e_shentsize
    put_u16(&mut h, 32); // e_shnum
    put_u16(&mut h, 31); // e_shstrndx
    h
}

/// A DDS header (magic + 124 bytes) for a DXT5 texture.
fn dds_header(rng: &mut Rng) -> Vec<u8> {
    let side = 1u32 << rng.range(6, 12);
    let mut h = Vec::with_capacity(128);
    h.extend_from_slice(b"DDS ");
    put_u32(&mut h, 124);
    put_u32(&mut h, 0x000A_1007); // caps | height | width | pixelformat | mipmapcount | linearsize
    put_u32(&mut h, side);
    put_u32(&mut h, side);
    put_u32(&mut h, side * side);
    put_u32(&mut h, 0);
    put_u32(&mut h, side.trailing_zeros() + 1);
    h.extend_from_slice(&[0; 44]);
    put_u32(&mut h, 32);
    put_u32(&mut h, 4); // DDPF_FOURCC
    h.extend_from_slice(b"DXT5");
    h.extend_from_slice(&[0; 20]);
    put_u32(&mut h, 0x0040_1008);
    h.extend_from_slice(&[0; 16]);
    h
}

/// A RIFF/WAVE header as Wwise `.wem` files start with.
fn riff_header(size: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    put_u32(
        &mut h,
        size.saturating_sub(8).min(u64::from(u32::MAX)) as u32,
    );
    h.extend_from_slice(b"WAVEfmt ");
    put_u32(&mut h, 16);
    put_u16(&mut h, 0xFFFF); // Wwise Vorbis
    put_u16(&mut h, 2);
    put_u32(&mut h, 48_000);
    put_u32(&mut h, 24_000);
    put_u16(&mut h, 0);
    put_u16(&mut h, 0);
    h.extend_from_slice(b"data");
    put_u32(
        &mut h,
        size.saturating_sub(44).min(u64::from(u32::MAX)) as u32,
    );
    h
}

/// Generates `size` bytes of content of `kind`, deterministically from `seed`.
pub(crate) fn generate(kind: Kind, size: u64, seed: u64, vocab: &Vocab) -> Vec<u8> {
    let mut out = Vec::new();
    generate_into(kind, size, seed, vocab, &mut out);
    out
}

/// Like [`generate`], into a reused buffer (its previous content is discarded). Reusing one
/// buffer for many entries avoids page-faulting fresh memory for every entry.
pub(crate) fn generate_into(kind: Kind, size: u64, seed: u64, vocab: &Vocab, out: &mut Vec<u8>) {
    let mut rng = Rng::new(seed);
    let n = size as usize;
    let header = match kind {
        Kind::Code => elf_header(&mut rng, size, false),
        Kind::Texture => dds_header(&mut rng),
        Kind::Audio => riff_header(size),
        Kind::Text(style) => {
            *out = text(style, n, &mut rng, vocab);
            return;
        }
    };
    out.clear();
    out.extend_from_slice(&header[..header.len().min(n)]);
    if out.len() >= n {
        return;
    }
    let head = out.len();
    out.resize(n, 0);
    match kind {
        Kind::Code => {
            // Code and data sections, then a string table of mangled symbol names.
            let strtab = (n - head) / 10;
            let code_end = n - strtab;
            fill_mix(&mut rng, &mut out[head..code_end], &CODE_MIX);
            let names = symbol_table(strtab, &mut rng, vocab);
            out[code_end..].copy_from_slice(&names);
        }
        Kind::Texture => fill_mix(&mut rng, &mut out[head..], &TEXTURE_MIX),
        Kind::Audio => rng.fill(&mut out[head..]),
        Kind::Text(_) => unreachable!("handled above"),
    }
}

/// Generates `size` bytes of an ELF executable (the `e_type` of the header says so).
pub(crate) fn generate_exec(size: u64, seed: u64, vocab: &Vocab) -> Vec<u8> {
    let mut out = generate(Kind::Code, size, seed, vocab);
    if out.len() >= 18 {
        out[16] = 2;
    }
    out
}

/// A `.dynstr`-like table of NUL-separated Itanium-mangled names, exactly `n` bytes.
fn symbol_table(n: usize, rng: &mut Rng, vocab: &Vocab) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 128);
    while out.len() < n {
        out.extend_from_slice(b"_ZN");
        let parts = rng.range(2, 4);
        for _ in 0..parts {
            let w = if rng.chance(0.5) {
                vocab.cap(rng)
            } else {
                vocab.word(rng)
            };
            out.extend_from_slice(w.len().to_string().as_bytes());
            out.extend_from_slice(w.as_bytes());
        }
        out.extend_from_slice(match rng.below(4) {
            0 => b"Ev".as_slice(),
            1 => b"ERKS0_",
            2 => b"Ei",
            _ => b"EPKc",
        });
        out.push(0);
    }
    out.truncate(n);
    out
}

/// Probability that a text word repeats one of the last 16 distinct draws.
const RECENT_REUSE: f64 = 0.5;

/// Probability that a text line repeats one of the last 64 distinct lines, per style (tuned
/// so that every style compresses about 5:1 with gzip -6).
fn repeat_line(style: TextStyle) -> f64 {
    match style {
        TextStyle::Lua => 0.36,
        TextStyle::Xml => 0.04,
        TextStyle::Json => 0.37,
        TextStyle::Cfg => 0.56,
        TextStyle::Shader => 0.17,
    }
}

/// Helper building text line by line.
struct TextGen<'a> {
    rng: &'a mut Rng,
    vocab: &'a Vocab,
    out: Vec<u8>,
    /// Recently used word indices: real text keeps reusing the identifiers in scope.
    recent: [usize; 16],
    next_recent: usize,
}

impl TextGen<'_> {
    fn s(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }
    /// Picks a word index: often one used recently, else a fresh skewed draw.
    fn pick_word(&mut self) -> usize {
        if self.rng.chance(RECENT_REUSE) {
            self.recent[self.rng.index(self.recent.len())]
        } else {
            let i = self.vocab.skewed(self.rng);
            self.recent[self.next_recent % self.recent.len()] = i;
            self.next_recent += 1;
            i
        }
    }
    fn w(&mut self) {
        let i = self.pick_word();
        let w = self.vocab.word_at(i);
        self.out.extend_from_slice(w.as_bytes());
    }
    fn c(&mut self) {
        let i = self.pick_word();
        let w = self.vocab.cap_at(i);
        self.out.extend_from_slice(w.as_bytes());
    }
    /// A small integer, mostly 0..16.
    fn int(&mut self) {
        let v = if self.rng.chance(0.8) {
            self.rng.below(16)
        } else {
            self.rng.below(1000)
        };
        self.s(&v.to_string());
    }
    /// A short float such as `0.5` or `12.25`.
    fn float(&mut self) {
        const FRACS: &[&str] = &["0", "5", "25", "75", "1", "125", "05", "333"];
        let whole = if self.rng.chance(0.7) {
            self.rng.below(4)
        } else {
            self.rng.below(200)
        };
        let frac = *self.rng.pick(FRACS);
        self.s(&format!("{whole}.{frac}"));
    }
    fn boolean(&mut self) {
        let b = if self.rng.chance(0.5) {
            "true"
        } else {
            "false"
        };
        self.s(b);
    }
    fn indent(&mut self, depth: u64) {
        for _ in 0..depth {
            self.s("    ");
        }
    }

    fn lua_line(&mut self) {
        match self.rng.below(12) {
            0 => {
                self.s("local ");
                self.w();
                self.c();
                self.s(" = ");
                self.c();
                self.s(".");
                self.w();
                self.s("(\"");
                self.w();
                self.s("\", ");
                self.int();
                self.s(")\n");
            }
            1 => {
                self.s("\nfunction ");
                self.c();
                self.s(":");
                self.c();
                self.c();
                self.s("(");
                self.w();
                self.s(", ");
                self.w();
                self.s(")\n");
            }
            2 => {
                self.s("    if self.");
                self.w();
                self.s(" ~= nil and ");
                self.w();
                self.s(" > ");
                self.int();
                self.s(" then\n");
            }
            3 | 4 => {
                self.s("        self.");
                self.w();
                self.c();
                self.s(" = ");
                self.w();
                self.s(" * ");
                self.float();
                self.s("\n");
            }
            5 => self.s("    end\n"),
            6 => self.s("end\n"),
            7 => {
                self.s("    -- ");
                for _ in 0..self.rng.range(3, 8) {
                    self.w();
                    self.s(" ");
                }
                self.s("\n");
            }
            8 | 9 => {
                self.s("    ");
                self.c();
                self.s("RequestBus.Event.");
                self.c();
                self.s("(self.entityId, ");
                self.w();
                self.s(")\n");
            }
            10 => {
                self.s("    return self.");
                self.w();
                self.s("\n");
            }
            _ => {
                self.s("        ");
                self.w();
                self.s(":");
                self.c();
                self.s("(\"");
                self.w();
                self.s("_");
                self.w();
                self.s("\", ");
                self.boolean();
                self.s(")\n");
            }
        }
    }

    fn xml_line(&mut self) {
        match self.rng.below(6) {
            0 => {
                self.s(" <Entity Name=\"");
                self.w();
                self.s("_");
                self.int();
                self.s("\" Layer=\"");
                self.c();
                self.s("\" Pos=\"");
                self.float();
                self.s(",");
                self.float();
                self.s(",");
                self.float();
                self.s("\" Rotate=\"1,0,0,0\" EntityClass=\"");
                self.c();
                self.c();
                self.s("\">\n");
            }
            1 | 2 => {
                self.s("  <Property Name=\"");
                self.w();
                self.c();
                self.s("\" Value=\"");
                match self.rng.below(3) {
                    0 => self.float(),
                    1 => self.boolean(),
                    _ => self.w(),
                }
                self.s("\"/>\n");
            }
            3 => {
                self.s("  <Material Name=\"materials/");
                self.w();
                self.s("/");
                self.w();
                self.s("\" Shader=\"Illum\" SurfaceType=\"mat_");
                self.w();
                self.s("\"/>\n");
            }
            4 => {
                self.s("  <Link Target=\"");
                self.w();
                self.s("_");
                self.int();
                self.s("\" Event=\"On");
                self.c();
                self.s("\"/>\n");
            }
            _ => self.s(" </Entity>\n"),
        }
    }

    fn json_line(&mut self) {
        let depth = self.rng.range(1, 3);
        self.indent(depth);
        self.s("\"");
        self.w();
        self.c();
        self.s("\": ");
        match self.rng.below(5) {
            0 => self.int(),
            1 => self.float(),
            2 => self.boolean(),
            3 => {
                self.s("\"");
                self.w();
                self.s("/");
                self.w();
                self.s("\"");
            }
            _ => {
                self.s("[");
                self.float();
                self.s(", ");
                self.float();
                self.s(", ");
                self.float();
                self.s("]");
            }
        }
        self.s(",\n");
    }

    fn cfg_line(&mut self) {
        match self.rng.below(8) {
            0 => {
                self.s("-- ");
                self.w();
                self.s(" ");
                self.w();
                self.s(" ");
                self.w();
                self.s("\n");
            }
            1 => {
                self.s("sv_");
                self.w();
                self.s("_");
                self.w();
                self.s(" = ");
                self.int();
                self.s("\n");
            }
            2 | 3 => {
                self.s("r_");
                self.c();
                self.c();
                self.s(" = ");
                self.float();
                self.s("\n");
            }
            4 => {
                self.s("g_");
                self.w();
                self.c();
                self.s(" = ");
                self.boolean();
                self.s("\n");
            }
            _ => {
                self.s("e_");
                self.c();
                self.s(" = ");
                self.int();
                self.s("\n");
            }
        }
    }

    fn shader_line(&mut self) {
        match self.rng.below(7) {
            0 => {
                self.s("float4 ");
                self.w();
                self.c();
                self.s(" = tex2D(");
                self.w();
                self.s("Sampler, IN.baseTC.xy) * ");
                self.float();
                self.s(";\n");
            }
            1 => {
                self.s("  half3 ");
                self.w();
                self.s(" = normalize(");
                self.w();
                self.s(".xyz - ");
                self.w();
                self.s(".xyz);\n");
            }
            2 => {
                self.s("#if %_RT_");
                self.c();
                self.s("\n");
            }
            3 => self.s("#endif\n"),
            4 => {
                self.s("float ");
                self.c();
                self.s("Scale < psslot = ");
                self.int();
                self.s("; UIName = \"");
                self.c();
                self.s(" ");
                self.c();
                self.s("\"; > = ");
                self.float();
                self.s(";\n");
            }
            5 => {
                self.s("  OUT.Color.rgb = lerp(");
                self.w();
                self.s(", ");
                self.w();
                self.s(", saturate(");
                self.w();
                self.s(" * ");
                self.float();
                self.s("));\n");
            }
            _ => {
                self.s("  return ");
                self.w();
                self.s(";\n}\n\n");
            }
        }
    }
}

/// Exactly `n` bytes of text of the given style, ending in a newline.
pub(crate) fn text(style: TextStyle, n: usize, rng: &mut Rng, vocab: &Vocab) -> Vec<u8> {
    let mut g = TextGen {
        rng,
        vocab,
        out: Vec::with_capacity(n + 256),
        recent: [0; 16],
        next_recent: 0,
    };
    match style {
        TextStyle::Xml => g.s("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Objects>\n"),
        TextStyle::Json => g.s("{\n    \"version\": 2,\n"),
        TextStyle::Lua => g.s("-- Copyright (c) MultiplayerSample contributors\n\n"),
        TextStyle::Shader => g.s("#include \"Common.cfi\"\n\n"),
        TextStyle::Cfg => g.s("-- MultiplayerSample configuration\n"),
    }
    // Recently written lines (start, end): real text repeats whole lines and phrases.
    let mut lines = [(0usize, 0usize); 64];
    let mut nlines = 0usize;
    let repeat = repeat_line(style);
    while g.out.len() < n {
        let start = g.out.len();
        if nlines > 0 && g.rng.chance(repeat) {
            let (s, e) = lines[g.rng.index(nlines.min(lines.len()))];
            g.out.extend_from_within(s..e);
            continue;
        }
        match style {
            TextStyle::Lua => g.lua_line(),
            TextStyle::Xml => g.xml_line(),
            TextStyle::Json => g.json_line(),
            TextStyle::Cfg => g.cfg_line(),
            TextStyle::Shader => g.shader_line(),
        }
        lines[nlines % 64] = (start, g.out.len());
        nlines += 1;
    }
    let mut out = g.out;
    out.truncate(n);
    if let Some(last) = out.last_mut() {
        *last = b'\n';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn gz6_ratio(data: &[u8]) -> f64 {
        let mut e = GzEncoder::new(Vec::new(), Compression::new(6));
        e.write_all(data).expect("compress to memory");
        let c = e.finish().expect("finish");
        data.len() as f64 / c.len() as f64
    }

    #[test]
    fn exact_sizes_and_determinism() {
        let v = Vocab::new(1);
        for kind in [
            Kind::Code,
            Kind::Texture,
            Kind::Audio,
            Kind::Text(TextStyle::Lua),
            Kind::Text(TextStyle::Xml),
            Kind::Text(TextStyle::Json),
            Kind::Text(TextStyle::Cfg),
            Kind::Text(TextStyle::Shader),
        ] {
            for size in [0u64, 1, 10, 63, 64, 65, 200, 4096, 100_003] {
                let a = generate(kind, size, 9, &v);
                assert_eq!(a.len() as u64, size, "{kind:?} {size}");
                assert_eq!(a, generate(kind, size, 9, &v));
            }
            assert_ne!(generate(kind, 5000, 9, &v), generate(kind, 5000, 10, &v));
        }
        assert_eq!(&generate(Kind::Code, 100, 1, &v)[..4], b"\x7fELF");
        assert_eq!(&generate(Kind::Texture, 1000, 1, &v)[..4], b"DDS ");
        assert_eq!(&generate(Kind::Audio, 1000, 1, &v)[..4], b"RIFF");
        assert_eq!(generate_exec(100, 1, &v)[16], 2);
    }

    #[test]
    fn compression_ratios_are_realistic() {
        let v = Vocab::new(3);
        let n = 4 << 20;
        let code = gz6_ratio(&generate(Kind::Code, n, 1, &v));
        let tex = gz6_ratio(&generate(Kind::Texture, n, 2, &v));
        let audio = gz6_ratio(&generate(Kind::Audio, n, 3, &v));
        assert!((2.6..3.5).contains(&code), "code {code}");
        assert!((2.2..2.9).contains(&tex), "texture {tex}");
        assert!((0.98..1.02).contains(&audio), "audio {audio}");
        for style in [
            TextStyle::Lua,
            TextStyle::Xml,
            TextStyle::Json,
            TextStyle::Cfg,
            TextStyle::Shader,
        ] {
            let t = gz6_ratio(&generate(Kind::Text(style), n / 4, 4, &v));
            assert!((4.0..7.0).contains(&t), "text {style:?} {t}");
        }
    }

    #[test]
    fn kinds_from_names() {
        assert_eq!(Kind::for_name("textures/a/b.dds"), Kind::Texture);
        assert_eq!(Kind::for_name("sounds/x.wem"), Kind::Audio);
        assert_eq!(Kind::for_name("scripts/x.lua"), Kind::Text(TextStyle::Lua));
        assert_eq!(Kind::for_name("libfoo.so"), Kind::Code);
        assert_eq!(Kind::for_name("qtlibs/libQt5Core.so.5"), Kind::Code);
        assert_eq!(Kind::for_name("level.xml"), Kind::Text(TextStyle::Xml));
    }
}
