//! Behaviour of the public API, largely following the table in containerd's
//! filters tests: a small corpus of objects, a filter string, and which
//! objects it selects (or which error it produces).

use std::collections::HashMap;

use crated_filters::{label_field, parse, parse_all, Adaptor, Filter, ParseError};

struct Entry {
    name: &'static str,
    other: &'static str,
    labels: HashMap<String, String>,
}

fn entry(name: &'static str, other: &'static str, labels: &[(&str, &str)]) -> Entry {
    Entry {
        name,
        other,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn corpus() -> Vec<Entry> {
    vec![
        entry("foo", "", &[("foo", "true")]),
        entry("bar", "", &[]),
        entry(
            "foo",
            "",
            &[("foo", "present"), ("more complex label", "present")],
        ),
        entry("bar", "", &[("bar", "true")]),
        entry(
            "fooer",
            "",
            &[("more complex label with \\ and \"", "present")],
        ),
        entry(
            "fooer",
            "",
            &[("more complex label with \\ and \".post", "present")],
        ),
        entry("baz", "too complex, yo", &[]),
        entry("bazo", "abc", &[]),
        entry("compound", "", &[("foo", "omg_asdf.asdf-qwer")]),
    ]
}

const ALL: &[usize] = &[0, 1, 2, 3, 4, 5, 6, 7, 8];

/// Present when non-empty, like containerd's test adaptor.
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// Indices of the corpus entries `filter` selects, using a closure adaptor.
fn select(filter: &Filter) -> Vec<usize> {
    corpus()
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            let adaptor = |path: &[String]| -> Option<String> {
                let (first, rest) = path.split_first()?;
                match first.as_str() {
                    "name" => non_empty(e.name),
                    "other" => non_empty(e.other),
                    "labels" => label_field(&e.labels, rest),
                    _ => None,
                }
            };
            filter.matches(&adaptor)
        })
        .map(|(i, _)| i)
        .collect()
}

fn selects(input: &str, expected: &[usize]) {
    match parse(input) {
        Ok(filter) => assert_eq!(select(&filter), expected, "filter {input:?}"),
        Err(e) => panic!("filter {input:?} failed to parse: {e}"),
    }
}

fn parse_err(input: &str) -> ParseError {
    match parse(input) {
        Ok(f) => panic!("filter {input:?} parsed, expected an error: {f:?}"),
        Err(e) => {
            assert_eq!(e.input, input);
            e
        }
    }
}

/// Asserts the error position and its full rendering.
fn fails(input: &str, position: usize, display: &str) {
    let e = parse_err(input);
    assert_eq!(e.position, position, "position for {input:?}: {e}");
    assert_eq!(e.to_string(), display, "display for {input:?}");
}

#[test]
fn empty_filter_matches_everything() {
    selects("", ALL);
    assert_eq!(select(&Filter::always()), ALL);
}

#[test]
fn presence() {
    selects("name", ALL);
    selects("labels.foo", &[0, 2, 8]);
    selects("other", &[6, 7]);
    selects("labels", &[]);
    selects("missing", &[]);
}

#[test]
fn conjunction_with_comma() {
    selects("labels.foo,name", &[0, 2, 8]);
    selects("name==bar,labels.bar", &[3]);
    selects("name==bar,labels.bar==true", &[3]);
    selects("name==bar,labels.bar==wrong", &[]);
    selects("name==foo,labels.foo==present,labels.foo", &[2]);
}

#[test]
fn equality() {
    selects("labels.foo==true", &[0]);
    selects("name==bar", &[1, 3]);
    selects("labels.foo==omg_asdf.asdf-qwer", &[8]);
    // `==` requires presence: the test adaptor reports an empty `other` as
    // absent, so nothing equals "".
    selects(r#"other=="""#, &[]);
}

#[test]
fn inequality() {
    selects("name!=bar", &[0, 2, 4, 5, 6, 7, 8]);
    // An absent field compares as the empty string.
    selects("other!=abc", &[0, 1, 2, 3, 4, 5, 6, 8]);
    selects(r#"other!="""#, &[6, 7]);
}

#[test]
fn regular_expressions() {
    selects("other~=[abc]+,name!=foo", &[6, 7]);
    selects("name~=^foo", &[0, 2, 4, 5]);
    selects("name~=^foo$", &[0, 2]);
    selects(r"name~=^ba[rz]\w*$", &[1, 3, 6, 7]);
    // The regex searches the value rather than matching it whole.
    selects("name~=oo", &[0, 2, 4, 5]);
    // Absent fields are searched as "".
    selects("other~=^$", &[0, 1, 2, 3, 4, 5, 8]);
    selects(r#"name~="^fooer$""#, &[4, 5]);
}

#[test]
fn slash_and_pipe_quoted_regular_expressions() {
    selects("other~=/[abc]+/,name!=foo", &[6, 7]);
    selects("other~=/[abc]{1,2}/,name!=foo", &[6, 7]);
    selects("other~=|[abc]{1,2}|,name!=foo", &[6, 7]);
    // Valid syntax (an escaped `/` inside `/.../`), but matches nothing.
    selects(r#"other~=/[abc]{0,1}"\//,name!=foo"#, &[]);
    selects(r"other~=/ complex, /", &[6]);
    selects(r"other~=^too\scomplex", &[6]);
    // Inside a quoted literal only string escapes are allowed, so regex
    // escapes such as `\s` must be written unquoted (or doubled in "...").
    fails(
        r"other~=/^too\scomplex/",
        7,
        r"[other~= >|/|< ^too\scomplex/]: illegal escape sequence",
    );
    selects(r#"other~="^too\\scomplex""#, &[6]);
}

#[test]
fn alternative_quotes_only_for_regular_expressions() {
    fails(
        "labels.|foo|==omg_asdf.asdf-qwer",
        7,
        "[labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered",
    );
    fails(
        "name==/foo/",
        6,
        "[name== >|/|< foo/]: invalid quote encountered",
    );
    fails(
        "name!=|foo|",
        6,
        "[name!= >|||< foo|]: invalid quote encountered",
    );
}

#[test]
fn quoted_values() {
    selects(r#"other=="too complex, yo""#, &[6]);
    selects(r#"other=="too complex, yo",name==baz"#, &[6]);
    selects(r#"name=="b\u0061r""#, &[1, 3]);
    selects(r#"name=="\x62ar""#, &[1, 3]);
    selects(r#"name=="\142ar""#, &[1, 3]);
}

#[test]
fn quoted_field_components() {
    selects(r#"name==foo,labels."more complex label""#, &[2]);
    selects(
        r#"labels."more complex label with \\ and \""==present"#,
        &[4],
    );
    selects(
        r#"labels."more complex label with \\ and \"".post==present"#,
        &[5],
    );
    selects(r#""name"==bar"#, &[1, 3]);
}

#[test]
fn dotted_label_keys() {
    let labels: HashMap<String, String> = [("a.b", "c"), ("a", "top")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let adaptor = |path: &[String]| match path.split_first() {
        Some((first, rest)) if first == "labels" => label_field(&labels, rest),
        _ => None,
    };
    let check = |input: &str, expected: bool| match parse(input) {
        Ok(f) => assert_eq!(f.matches(&adaptor), expected, "{input:?}"),
        Err(e) => panic!("{input:?}: {e}"),
    };
    check(r#"labels."a.b"==c"#, true);
    check("labels.a.b==c", true);
    check(r#"labels."a.b""#, true);
    check("labels.a==top", true);
    check(r#"labels."a.b"==top"#, false);
    check(r#"labels."a.c""#, false);
}

#[test]
fn label_field_helper() {
    let labels: HashMap<String, String> = [("a.b".to_owned(), "c".to_owned())].into();
    assert_eq!(label_field(&labels, &["a.b".into()]), Some("c".into()));
    assert_eq!(
        label_field(&labels, &["a".into(), "b".into()]),
        Some("c".into())
    );
    assert_eq!(label_field(&labels, &["a".into()]), None);
    assert_eq!(label_field(&labels, &[]), None);
}

#[test]
fn whitespace() {
    selects("  name == bar", &[1, 3]);
    selects("name==bar, labels.bar", &[3]);
    selects("name ==\tbar", &[1, 3]);
    // Nothing but `,` or the end may directly follow a selector.
    fails("name==bar ", 9, "[name==bar >| |< ]: unexpected input:  ");
    fails(
        "name==bar ,labels.bar",
        9,
        "[name==bar >| |< ,labels.bar]: unexpected input:  ",
    );
    fails(
        "name==foo bar",
        9,
        "[name==foo >| |< bar]: unexpected input:  ",
    );
    fails("  ", 2, "[  ]: expected field or quoted");
}

#[test]
fn parse_all_is_a_disjunction() {
    let f = parse_all(&["name==bar", "labels.foo==true"]).expect("parses");
    assert_eq!(select(&f), [0, 1, 3]);

    let owned = vec![String::from("name==baz"), String::from("other==abc")];
    let f = parse_all(&owned).expect("parses");
    assert_eq!(select(&f), [6, 7]);

    // Selectors inside one argument still have to match together.
    let f = parse_all(&["name==bar,labels.bar", "name==compound"]).expect("parses");
    assert_eq!(select(&f), [3, 8]);

    let none: &[&str] = &[];
    assert_eq!(select(&parse_all(none).expect("parses")), ALL);

    // An empty string among the arguments matches everything.
    let f = parse_all(&["name==nothing", ""]).expect("parses");
    assert_eq!(select(&f), ALL);
}

#[test]
fn parse_all_reports_the_failing_argument() {
    let e = parse_all(&["name==bar", "name=x"]).expect_err("second is invalid");
    assert_eq!(e.input, "name=x");
    assert_eq!(e.position, 4);
    assert_eq!(e.to_string(), r#"[name >|=|< x]: unsupported operator "=""#);
}

#[test]
fn combinators() {
    assert_eq!(select(&Filter::Any(vec![])), Vec::<usize>::new());
    assert_eq!(select(&Filter::All(vec![])), ALL);
    let f = parse("name==bar").expect("parses");
    let both = Filter::All(vec![f.clone(), parse("labels.bar").expect("parses")]);
    assert_eq!(select(&both), [3]);
    let either = Filter::Any(vec![f, parse("name==baz").expect("parses")]);
    assert_eq!(select(&either), [1, 3, 6]);
}

#[test]
fn values_that_are_not_utf8() {
    // `\x` escapes give raw bytes; such a value equals nothing...
    selects(r#"name=="\xff""#, &[]);
    selects(r#"name!="\xff""#, ALL);
    // ...and is not a usable regular expression.
    fails(
        r#"name~="\xff""#,
        6,
        r#"[name~= >|"|< \xff"]: failed to parse regular expression: invalid UTF-8"#,
    );
}

/// An image-like record seen through a closure adaptor.
struct Image {
    name: String,
    labels: HashMap<String, String>,
}

impl Image {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.split_first()? {
            (first, []) if first == "name" => Some(self.name.clone()),
            (first, rest) if first == "labels" => label_field(&self.labels, rest),
            _ => None,
        }
    }
}

#[test]
fn closure_adaptor_over_an_image_record() {
    let images = [
        Image {
            name: "docker.io/library/alpine:3.19".into(),
            labels: [(
                "org.opencontainers.image.version".to_owned(),
                "3.19".to_owned(),
            )]
            .into(),
        },
        Image {
            name: "ghcr.io/acme/app:v2".into(),
            labels: [("team".to_owned(), "infra".to_owned())].into(),
        },
    ];
    let pick = |input: &str| -> Vec<&str> {
        let filter = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        images
            .iter()
            .filter(|img| filter.matches(&|p: &[String]| img.field(p)))
            .map(|img| img.name.as_str())
            .collect()
    };

    assert_eq!(
        pick(r"name~=^docker\.io/"),
        ["docker.io/library/alpine:3.19"]
    );
    assert_eq!(pick("name==ghcr.io/acme/app:v2"), ["ghcr.io/acme/app:v2"]);
    assert_eq!(
        pick(r#"labels."org.opencontainers.image.version"==3.19"#),
        ["docker.io/library/alpine:3.19"]
    );
    assert_eq!(
        pick("labels.org.opencontainers.image.version"),
        ["docker.io/library/alpine:3.19"]
    );
    assert_eq!(
        pick("labels.team!=infra"),
        ["docker.io/library/alpine:3.19"]
    );
    assert_eq!(pick("name.sub"), Vec::<&str>::new());

    // The adaptor can also be a named type.
    struct ByName<'a>(&'a Image);
    impl Adaptor for ByName<'_> {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.field(path)
        }
    }
    let f = parse("name~=alpine").expect("parses");
    assert!(f.matches(&ByName(&images[0])));
    assert!(!f.matches(&ByName(&images[1])));
}

#[test]
fn containerd_error_cases() {
    fails(
        r#"labels.?"more complex label with \\ and \"".post==present"#,
        7,
        r#"[labels. >|?|< "more complex label with \\ and \"".post==present]: expected field or quoted"#,
    );
    fails("name==foo,", 10, "[name==foo,]: expected field or quoted");
    fails("labels.", 7, "[labels.]: expected field or quoted");
    fails(
        "image~=,id?=?fbaq",
        7,
        "[image~= >|,|< id?=?fbaq]: expected value or quoted",
    );
    fails(
        "labels.ns/key==value",
        9,
        "[labels.ns >|/|< key==value]: quoted literal not terminated",
    );
    fails(
        "labels.key==/value",
        12,
        "[labels.key== >|/|< value]: quoted literal not terminated",
    );
}

#[test]
fn malformed_inputs() {
    fails("name==", 6, "[name==]: expected value or quoted");
    fails("==x", 0, "[ >|=|< =x]: expected field or quoted");
    fails("name=x", 4, r#"[name >|=|< x]: unsupported operator "=""#);
    fails(
        "name!==x",
        4,
        r#"[name >|!|< ==x]: unsupported operator "!==""#,
    );
    fails("name==a,", 8, "[name==a,]: expected field or quoted");
    fails(",name", 0, "[ >|,|< name]: expected field or quoted");
    fails(
        r#"labels."unterminated"#,
        7,
        r#"[labels. >|"|< unterminated]: quoted literal not terminated"#,
    );
    fails(
        r#"labels."\g""#,
        7,
        r#"[labels. >|"|< \g"]: illegal escape sequence"#,
    );
    fails(
        r#"labels."\xaz""#,
        7,
        r#"[labels. >|"|< \xaz"]: illegal numeric escape sequence"#,
    );
    // The scanner accepts three octal digits; the value is then too large.
    fails(
        r#"name=="\400""#,
        6,
        r#"[name== >|"|< \400"]: unquoting failed: quote syntax error"#,
    );
    fails(
        r#"name=="a"b"#,
        9,
        r#"[name=="a" >|b|< ]: unexpected input: b"#,
    );
    // `-` is not a field character in containerd 1.x.
    fails(
        "labels.fo-o==x",
        9,
        r#"[labels.fo >|-|< o==x]: expected an operator ("=="|"!="|"~=")"#,
    );
    fails("foo\0bar", 3, "[foo >|\0|< bar]: unexpected null");
    // Positions are byte offsets; the marker shows the whole character.
    fails("名前==x", 0, "[ >|名|< 前==x]: expected field or quoted");
    fails(
        "name==x,名",
        8,
        "[name==x, >|名|< ]: expected field or quoted",
    );
}

#[test]
fn invalid_regular_expressions() {
    let e = parse_err("name~=[");
    assert_eq!(e.position, 6);
    assert!(
        e.message
            .starts_with("failed to parse regular expression: "),
        "{e}"
    );
    assert!(!e.message.contains('\n'), "{e}");
    assert_eq!(
        e.to_string(),
        "[name~= >|[|< ]: failed to parse regular expression: unclosed character class"
    );

    let e = parse_err("labels.a==ok,name~=/(unclosed/");
    assert_eq!(e.position, 19);
    assert!(
        e.to_string().starts_with(
            "[labels.a==ok,name~= >|/|< (unclosed/]: failed to parse regular expression: "
        ),
        "{e}"
    );
}

#[test]
fn parse_error_display_at_end_of_input() {
    let e = ParseError {
        input: "abc".into(),
        position: 3,
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "[abc]: boom");
    let e = ParseError {
        input: "abc".into(),
        position: 1,
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "[a >|b|< c]: boom");
}
