"""The JDL: reading what users write, writing it back, the typed description, parametric jobs."""

from __future__ import annotations

import random
import time

import pytest

from vmdirac.core.exceptions import InvalidJDL, QuotaExceeded
from vmdirac.wms.jdl import MAX_DEPTH, Expression, dumps, parse
from vmdirac.wms.job_description import (
    DEFAULT_CPU_TIME, JobDescription, expand_parametric, parameter_vector_length, substitute_job_id,
)

EXAMPLE = """\
[
  JobName = "Gauss_test";            // comments: // ... , # ... , /* ... */
  Executable = "/bin/sh";
  Arguments = "-c 'echo hello %s'";
  StdOutput = "std.out";
  StdError = "std.err";
  InputSandbox = {"run.sh", "data/input.txt"};
  OutputSandbox = {"std.out", "std.err", "result.root"};
  CPUTime = 86400;
  Site = {"LCG.CERN.ch", "LCG.IN2P3.fr"};
  BannedSites = "LCG.Bad.org";
  Platform = "x86_64-el9";
  Tags = {"GPU", "cvmfs"};
  NumberOfProcessors = 4;
  MaxRAM = 8192;                     // MB
  JobType = "User";
  Priority = 1;
  JobGroup = "MyProd";
  Parameters = {"a", "b", "c"};      // or Parameters = 10; ParameterStart = 0; ParameterStep = 2;
]
"""


def fails(text: str) -> str:
    """The message ``parse`` refuses ``text`` with."""
    with pytest.raises(InvalidJDL) as e:
        parse(text)
    return str(e.value)


# ---------------------------------------------------------------- reading

def test_the_example_reads_into_typed_values_in_order():
    attrs = parse(EXAMPLE)
    assert list(attrs) == [
        "JobName", "Executable", "Arguments", "StdOutput", "StdError", "InputSandbox", "OutputSandbox",
        "CPUTime", "Site", "BannedSites", "Platform", "Tags", "NumberOfProcessors", "MaxRAM", "JobType",
        "Priority", "JobGroup", "Parameters",
    ]
    assert attrs["Arguments"] == "-c 'echo hello %s'"
    assert attrs["InputSandbox"] == ["run.sh", "data/input.txt"]
    assert attrs["CPUTime"] == 86400 and isinstance(attrs["CPUTime"], int)
    assert attrs["BannedSites"] == "LCG.Bad.org"
    assert attrs["Parameters"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('Executable = "/bin/ls"', {"Executable": "/bin/ls"}),  # no brackets, no final ';'
        ('[ Executable = "/bin/ls" ]', {"Executable": "/bin/ls"}),
        ('[\n  A = 1;\n  B = 2\n]', {"A": 1, "B": 2}),
        ("", {}),
        ("[ ]", {}),
        ("A = 1;; ;B = 2;", {"A": 1, "B": 2}),  # empty statements, as DIRAC tolerates
        ("# a comment\nA = 1; // another\n/* a\nblock */ B = 2;", {"A": 1, "B": 2}),
        ('A = "x // not # a /* comment */";', {"A": "x // not # a /* comment */"}),
        (r'A = "say \"hi\"\n\tand \\ go";', {"A": 'say "hi"\n\tand \\ go'}),
        (r'A = "C:\data";', {"A": "C:\\data"}),  # an unknown escape keeps its backslash
        ('A = "";', {"A": ""}),
        ("A = 42; B = -7; C = 2.5; D = 1e3; E = .5; F = -0.25;",
         {"A": 42, "B": -7, "C": 2.5, "D": 1000.0, "E": 0.5, "F": -0.25}),
        ("A = true; B = FALSE; C = True;", {"A": True, "B": False, "C": True}),
        ("A = {};", {"A": []}),
        ('A = {1, "two", 3.0, false};', {"A": [1, "two", 3.0, False]}),
        ('A = {"x", "y",};', {"A": ["x", "y"]}),  # a trailing comma, as DIRAC's list reader allows
        ('A = {{1, 2}, {"a"}, {}};', {"A": [[1, 2], ["a"], []]}),
        ('Requirements = other.Site == "X";', {"Requirements": Expression('other.Site == "X"')}),
        ("A = 3600 * 2;", {"A": Expression("3600 * 2")}),
        ("A = {a, b};", {"A": Expression("{a, b}")}),  # a list of non-literals is an expression
        ("MaxRAM = 8GB;", {"MaxRAM": Expression("8GB")}),
        ("Sub = [ x = 1; y = {1, 2} ];", {"Sub": Expression("[ x = 1; y = {1, 2} ]")}),
        ('R = Member("GPU", other.Tags) &&\n    other.Cores >= 4;',
         {"R": Expression('Member("GPU", other.Tags) &&\n    other.Cores >= 4')}),
        ('Parameters.A = {1, 2};', {"Parameters.A": [1, 2]}),
        ('\ufeffA = 1;', {"A": 1}),  # a byte-order mark from a Windows editor
        ("A = 1e999;", {"A": float("inf")}),
    ],
)
def test_good_jdl_reads_as_expected(text, expected):
    attrs = parse(text)
    assert attrs == expected
    assert [type(v) for v in attrs.values()] == [type(v) for v in expected.values()]


def test_known_names_are_matched_in_any_case_and_spelled_as_dirac_does():
    attrs = parse('executable = "x"; CPUTIME = 5; site = "A"; MyOption = 1; myother = 2;')
    assert list(attrs) == ["Executable", "CPUTime", "Site", "MyOption", "myother"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[\n  JobName = "x";\n  Executable = "/bin/sh";\n  Arguments = "oops;\n]',
         "line 4: unterminated string"),
        ("A = 1;\n/* never closed\nB = 2;", "line 2: unterminated comment"),
        ("[\n\n\n\n\n\n  Executable \"/bin/sh\";\n]", "line 7: expected '=' after Executable"),
        ('[\n  JobName = "a";\n  JobName = "b";\n]', "line 3: duplicate attribute JobName"),
        ('JobName = "a";\njobname = "b";', "line 2: duplicate attribute jobname"),
        ('Mine = 1;\nMINE = 2;', "line 2: duplicate attribute MINE"),
        ('[\n  A = 1;\n', "line 2: missing ']' at the end"),
        ("[ A = 1; ]\nB = 2;", "line 2: unexpected text after the closing ']'"),
        ("A = 1;\n]", "line 2, column 1: unexpected ']'"),
        ('A = 1;\n"B" = 2;', "line 2: expected an attribute name, got '\"B\"'"),
        ('A = "x"\nB = 2;', "line 1: expected ';' after the value of A"),
        ("A = ;", "line 1: missing value for A"),
        ("A = 1;\nB =", "line 2: missing value for B"),
        ('A = {"x", "y";\nB = 1;', "line 1: unclosed '{'"),
        ('[\n  A = {"x",\n  "y";\n]', "line 4: ']' does not close the '{' of line 2"),
        ("A = 1 };", "line 1, column 7: unexpected '}'"),
        ("A = 1;\nB = `x`;", "line 2, column 5: unexpected character '`'"),
        ("A = 1;\nB = " + "9" * 5000 + ";", "line 2: number too long"),
        ("A = " + "{" * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 1) + ";",
         f"line 1: nesting deeper than {MAX_DEPTH} levels"),
    ],
)
def test_bad_jdl_is_refused_with_a_one_line_message_naming_the_line(text, message):
    got = fails(text)
    assert got == message
    assert "\n" not in got


def test_nesting_up_to_the_limit_is_fine():
    depth = MAX_DEPTH
    value = parse("A = " + "{" * depth + "1" + "}" * depth + ";")["A"]
    for _ in range(depth):
        assert isinstance(value, list)
        value = value[0]
    assert value == 1


# ---------------------------------------------------------------- writing

def test_dumps_writes_diracs_layout():
    text = dumps({"Executable": "/bin/sh", "CPUTime": 3600, "InputSandbox": ["a", "b"], "Tags": []})
    assert text == (
        "[\n"
        '    Executable = "/bin/sh";\n'
        "    CPUTime = 3600;\n"
        "    InputSandbox =\n"
        "        {\n"
        '            "a",\n'
        '            "b"\n'
        "        };\n"
        "    Tags = {};\n"
        "]\n"
    )


ROUND_TRIP_CASES = [
    parse(EXAMPLE),
    {"A": 'quote " backslash \\ newline \n tab \t cr \r end', "B": "unicode é ✓ ∞", "C": "; ] } // # /*"},
    {"Small": 0.1, "Tiny": 1e-300, "Huge": 1e300, "Neg": -0.5, "Big": 2**80, "NegInt": -3, "Zero": 0},
    {"Nested": [[1, [2, ["x"]]], [], [True, False]], "Empty": [], "EmptyString": ""},
    {"Requirements": Expression('other.Site == "X" && (other.Cores >= 4)'),
     "Sub": Expression("[ x = 1; y = 2 ]")},
    {"Args": "%s %n %j 100%"},
]


@pytest.mark.parametrize("attrs", ROUND_TRIP_CASES)
def test_what_dumps_writes_parse_reads_back_the_same(attrs):
    assert parse(dumps(attrs)) == attrs


@pytest.mark.parametrize(
    "text", ["A = 1", "[ A = {1, 2.5, \"x\"}; B = other.X == 3 ]", "Requirements = a ||\n  b; C = {{}};"]
)
def test_parse_dumps_parse_is_stable(text):
    once = parse(text)
    assert parse(dumps(once)) == once
    assert dumps(parse(dumps(once))) == dumps(once)


def test_dumps_spells_known_names_as_dirac_does():
    assert parse(dumps({"executable": "x", "cputime": 5})) == {"Executable": "x", "CPUTime": 5}


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"A": Expression("x; y")}, "A: x; y is not a single JDL expression"),
        ({"A": Expression("x // comment")}, "A: x // comment is not a single JDL expression"),
        ({"A": Expression("5")}, "A: 5 is not a single JDL expression"),  # would read back as a number
        ({"A": float("nan")}, "A: nan cannot be written in a JDL"),
        ({"A": float("inf")}, "A: inf cannot be written in a JDL"),
        ({"A": {"k": 1}}, "A: {'k': 1} cannot be written in a JDL"),
        ({"A": None}, "A: None cannot be written in a JDL"),
        ({"A": [1, Expression("x")]},
         "A: an expression inside a list would not read back; make the list one"),
        ({"bad name": 1}, "'bad name' is not a valid attribute name"),
        ({"JobName": "a", "jobname": "b"}, "duplicate attribute jobname"),
    ],
)
def test_dumps_refuses_what_would_not_read_back(attrs, message):
    with pytest.raises(InvalidJDL) as e:
        dumps(attrs)
    assert str(e.value) == message


def _random_value(rng: random.Random, depth: int = 0):
    # Expressions only at the top: inside a list they would read back as one expression.
    kinds = ["str", "int", "float", "bool"] + (["list"] if depth < 3 else []) + (["expr"] if not depth else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return "".join(rng.choice('ab "\\\n\t;]}{/#*%é') for _ in range(rng.randint(0, 12)))
    if kind == "int":
        return rng.randint(-(2**70), 2**70)
    if kind == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 1e-200, -rng.random() * 1e200])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return Expression(rng.choice(['other.Site == "X"', "a && (b || !c)", "[ x = 1; y = {2} ]", "f(1, -2.5)"]))


def test_round_trip_holds_for_many_random_mappings():
    rng = random.Random(20240601)  # seeded: a failure is reproducible
    for _ in range(300):
        attrs = {f"Attr{i}": _random_value(rng) for i in range(rng.randint(0, 6))}
        assert parse(dumps(attrs)) == attrs


def test_random_text_is_read_or_refused_cleanly_and_what_is_read_writes_back():
    rng = random.Random(7)
    alphabet = 'ab =;{}[]",.-1e\\\n/*#&()\t`'
    refused = 0
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        try:
            attrs = parse(text)
        except InvalidJDL as e:  # never another exception type
            assert str(e).startswith("line ") and "\n" not in str(e)
            refused += 1
            continue
        assert parse(dumps(attrs)) == attrs
    assert 0 < refused < 3000


def test_round_trip_property():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    scalars = st.one_of(
        st.text(), st.integers(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False)
    )
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
    names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)

    @hypothesis.given(st.dictionaries(names, values, max_size=6))
    @hypothesis.settings(max_examples=200, deadline=None)
    def check(attrs):
        if len({k.lower() for k in attrs}) < len(attrs):
            return  # names equal but for case are one attribute in a JDL
        canonical = parse(dumps(attrs))
        assert parse(dumps(canonical)) == canonical
        assert list(canonical.values()) == list(attrs.values())

    check()


# ---------------------------------------------------------------- the typed description

def test_the_example_as_a_job_description():
    job = JobDescription.from_jdl(EXAMPLE)
    assert job.executable == "/bin/sh"
    assert job.arguments == "-c 'echo hello %s'"
    assert job.job_name == "Gauss_test" and job.job_group == "MyProd" and job.job_type == "User"
    assert job.input_sandbox == ("run.sh", "data/input.txt")
    assert job.output_sandbox == ("std.out", "std.err", "result.root")
    assert (job.std_output, job.std_error) == ("std.out", "std.err")
    assert job.cpu_time == 86400
    assert job.site == ("LCG.CERN.ch", "LCG.IN2P3.fr") and job.banned_sites == ("LCG.Bad.org",)
    assert job.platform == ("x86_64-el9",) and job.tags == ("GPU", "cvmfs")
    assert (job.number_of_processors, job.max_number_of_processors) == (4, 4)
    assert job.max_ram == 8192 and job.priority == 1
    assert job.attributes == parse(EXAMPLE)


def test_defaults_are_diracs():
    job = JobDescription.from_jdl('Executable = "run.sh";')
    assert job == JobDescription(executable="run.sh", attributes={"Executable": "run.sh"})
    assert job.cpu_time == DEFAULT_CPU_TIME == 86400
    assert (job.priority, job.job_type, job.job_name) == (1, "User", "Name")
    assert (job.number_of_processors, job.max_number_of_processors, job.max_ram) == (1, None, 0)
    assert job.site == job.banned_sites == job.platform == job.tags == job.input_sandbox == ()


@pytest.mark.parametrize(
    "extra, field, expected",
    [
        ('CPUTime = "3600";', "cpu_time", 3600),
        ("CPUTime = 3600.0;", "cpu_time", 3600),
        ('Priority = "0";', "priority", 0),
        ("Priority = 10;", "priority", 10),
        ('MaxRAM = "2048";', "max_ram", 2048),
        ("Arguments = 5;", "arguments", "5"),
        ('Site = "ANY";', "site", ()),
        ('Site = "";', "site", ()),
        ('Site = {"ANY"};', "site", ()),
        ('Site = {"any", "LCG.A.ch"};', "site", ("LCG.A.ch",)),
        ('Site = "LCG.A.ch, LCG.B.fr";', "site", ("LCG.A.ch", "LCG.B.fr")),  # DIRAC splits on commas
        ('Site = {"LCG.A.ch", "LCG.A.ch"};', "site", ("LCG.A.ch",)),
        ('Site = {"LCG.A.ch", "LCG.B.fr"}; BannedSites = "LCG.B.fr";', "site", ("LCG.A.ch",)),
        ('Platform = "ANY";', "platform", ()),
        ('Tags = "GPU";', "tags", ("GPU",)),
        ('InputSandbox = "";', "input_sandbox", ()),
        ('JobType = "";', "job_type", "User"),
        ('executable = "other"; JOBNAME = "n";', "job_name", "n"),
    ],
)
def test_values_are_coerced_as_dirac_users_expect(extra, field, expected):
    text = extra if "executable" in extra else f'Executable = "x";\n{extra}'
    assert getattr(JobDescription.from_jdl(text), field) == expected


@pytest.mark.parametrize(
    "extra, message",
    [
        ('CPUTime = "abc";', 'line 2: CPUTime must be a positive integer, got "abc"'),
        ("CPUTime = 0;", "line 2: CPUTime must be a positive integer, got 0"),
        ("CPUTime = 1.5;", "line 2: CPUTime must be a positive integer, got 1.5"),
        ("CPUTime = true;", "line 2: CPUTime must be a positive integer, got true"),
        ("Priority = 11;", "line 2: Priority must be an integer from 0 to 10, got 11"),
        ("Priority = -1;", "line 2: Priority must be an integer from 0 to 10, got -1"),
        ("MaxRAM = -1;", "line 2: MaxRAM must be a non-negative integer (MB), got -1"),
        ("MaxRAM = 8GB;", "line 2: MaxRAM must be a non-negative integer (MB), got 8GB"),
        ("NumberOfProcessors = 0;", "line 2: NumberOfProcessors must be a positive integer, got 0"),
        ('JobName = {"a"};', 'line 2: JobName must be a string, got {"a"}'),
        ("StdOutput = other.X;", "line 2: StdOutput must be a string, got other.X"),
        ("InputSandbox = {true};", "line 2: InputSandbox must be a string or a list of strings, got {true}"),
        ("Tags = {{\"a\"}};", 'line 2: Tags must be a string or a list of strings, got {{"a"}}'),
        ('Site = "LCG.A.ch";\nBannedSites = "LCG.A.ch";',
         "line 2: every Site is in BannedSites: the job could run nowhere"),
        ("NumberOfProcessors = 2;\nMinNumberOfProcessors = 4;",
         "line 2: NumberOfProcessors = 2 contradicts Min/MaxNumberOfProcessors"),
        ("MinNumberOfProcessors = 4;\nMaxNumberOfProcessors = 2;",
         "line 3: MaxNumberOfProcessors = 2 is below MinNumberOfProcessors = 4"),
    ],
)
def test_wrong_values_are_refused_with_the_line_of_the_attribute(extra, message):
    with pytest.raises(InvalidJDL) as e:
        JobDescription.from_jdl(f'Executable = "x";\n{extra}')
    assert str(e.value) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ('JobName = "x";', "Executable is required and must not be empty"),
        ('JobName = "x";\nExecutable = "  ";', "line 2: Executable is required and must not be empty"),
        ("Executable = {};", "line 1: Executable must be a string, got {}"),
    ],
)
def test_an_executable_is_required(text, message):
    with pytest.raises(InvalidJDL) as e:
        JobDescription.from_jdl(text)
    assert str(e.value) == message


def test_a_long_wrong_value_is_shortened_in_the_message():
    with pytest.raises(InvalidJDL) as e:
        JobDescription.from_attrs({"Executable": "x", "CPUTime": "9" * 500 + "x"})
    assert str(e.value).startswith('CPUTime must be a positive integer, got "999')
    assert str(e.value).endswith("...") and len(str(e.value)) < 120


@pytest.mark.parametrize(
    "processors, expected",
    [
        ({}, (1, None)),
        ({"NumberOfProcessors": 4}, (4, 4)),  # exactly 4
        ({"MinNumberOfProcessors": 2}, (2, None)),  # at least 2, uses whatever the slot has
        ({"MinNumberOfProcessors": 2, "MaxNumberOfProcessors": 8}, (2, 8)),
        ({"MaxNumberOfProcessors": 4}, (1, 4)),
        ({"NumberOfProcessors": 4, "MinNumberOfProcessors": 2, "MaxNumberOfProcessors": 8}, (4, 4)),
        ({"NumberOfProcessors": "3", "MaxNumberOfProcessors": 3}, (3, 3)),  # what DIRAC's Job API writes
    ],
)
def test_processors_follow_diracs_number_min_and_max(processors, expected):
    job = JobDescription.from_attrs({"Executable": "x", **processors})
    assert (job.number_of_processors, job.max_number_of_processors) == expected


def test_from_attrs_accepts_any_case_and_keeps_diracs_spelling():
    job = JobDescription.from_attrs({"executable": "x", "cputime": "60", "SITE": "LCG.A.ch"})
    assert (job.executable, job.cpu_time, job.site) == ("x", 60, ("LCG.A.ch",))
    assert list(job.attributes) == ["Executable", "CPUTime", "Site"]


def test_unknown_attributes_and_expressions_survive_to_jdl():
    text = 'Executable = "x";\nMyOption = "keep me";\nRequirements = other.Cores >= 4;\nCPUTime = "60";'
    job = JobDescription.from_jdl(text)
    again = parse(job.to_jdl())
    assert again["MyOption"] == "keep me"
    assert again["Requirements"] == Expression("other.Cores >= 4")
    assert again["CPUTime"] == "60"  # written as the user gave it; the typed field has the number
    assert JobDescription.from_jdl(job.to_jdl()) == job


def test_a_description_cannot_be_changed_behind_its_back():
    source = {"Executable": "x", "InputSandbox": ["a"]}
    job = JobDescription.from_attrs(source)
    source["InputSandbox"].append("b")
    assert job.attributes["InputSandbox"] == ["a"]
    with pytest.raises(TypeError):
        job.attributes["Executable"] = "y"  # type: ignore[index]
    assert hash(job) == hash(JobDescription.from_attrs({"Executable": "x", "InputSandbox": ["a"]}))


# ---------------------------------------------------------------- parametric jobs

def test_a_job_without_parameters_is_one_job():
    attrs = parse('Executable = "x"; Arguments = "%s %n %j";')
    jobs = expand_parametric(attrs, max_jobs=10)
    assert jobs == [attrs]
    assert jobs[0] is not attrs
    assert parameter_vector_length(attrs) is None


def test_a_list_of_parameters_makes_one_job_per_element():
    jobs = expand_parametric(parse(EXAMPLE), max_jobs=10)
    assert [j["Arguments"] for j in jobs] == [f"-c 'echo hello {p}'" for p in "abc"]
    assert [(j["Parameter"], j["ParameterNumber"]) for j in jobs] == [("a", 0), ("b", 1), ("c", 2)]
    assert all("Parameters" not in j for j in jobs)
    assert [JobDescription.from_attrs(j).arguments for j in jobs] == [j["Arguments"] for j in jobs]


@pytest.mark.parametrize(
    "settings, expected",
    [
        ("Parameters = 3; ParameterStart = 0; ParameterStep = 2;", [0, 2, 4]),
        ("Parameters = 3; ParameterStart = 0; ParameterStep = 2; ParameterFactor = 1;", [0, 2, 4]),
        ("Parameters = 4; ParameterStart = 1; ParameterFactor = 2;", [1, 2, 4, 8]),
        ("Parameters = 4; ParameterStart = 1; ParameterStep = 1; ParameterFactor = 2;", [1, 3, 7, 15]),
        ("Parameters = 3; ParameterStart = 5; ParameterStep = -1;", [5, 4, 3]),
        ("Parameters = 3; ParameterStart = 0.5; ParameterStep = 0.25;", [0.5, 0.75, 1.0]),
        ("Parameters = 3; ParameterStep = 1;", [1, 2, 3]),  # DIRAC starts at 1 by default
        ('Parameters = "2"; ParameterStart = "10"; ParameterStep = "5";', [10, 15]),
        ("Parameters = 1; ParameterStart = 7;", [7]),
    ],
)
def test_numeric_parameters_follow_diracs_recurrence(settings, expected):
    jobs = expand_parametric(parse('Executable = "x"; Arguments = "%s";' + settings), max_jobs=100)
    assert [j["Parameter"] for j in jobs] == expected
    assert [j["Arguments"] for j in jobs] == [str(v) for v in expected]
    assert [j["ParameterNumber"] for j in jobs] == list(range(len(expected)))
    assert all(not {"Parameters", "ParameterStart", "ParameterStep", "ParameterFactor"} & set(j) for j in jobs)


def test_a_float_step_or_factor_makes_every_value_a_float_as_in_dirac():
    jobs = expand_parametric(parse("Parameters = 3; ParameterStart = 1; ParameterFactor = 1.5;"), 10)
    assert [j["Parameter"] for j in jobs] == [1.0, 1.5, 2.25]
    assert all(isinstance(j["Parameter"], float) for j in jobs)
    assert jobs[0]["Parameter"] == 1.0


def test_substitution_reaches_lists_and_expressions_and_keeps_job_id_marks():
    attrs = parse(
        'Executable = "x"; Parameters = {"p0", "p1"};\n'
        'OutputSandbox = {"out_%s_%n.root", "log_%j.txt"};\n'
        'Requirements = other.Name == "%s";\nCPUTime = 100;'
    )
    second = expand_parametric(attrs, max_jobs=2)[1]
    assert second["OutputSandbox"] == ["out_p1_1.root", "log_%j.txt"]
    assert second["Requirements"] == Expression('other.Name == "p1"')
    assert second["CPUTime"] == 100


def test_the_index_is_zero_padded_to_the_width_of_the_last_one_as_in_dirac():
    jobs = expand_parametric(parse('Arguments = "%n"; Parameters = 11; ParameterStep = 1;'), max_jobs=11)
    assert [j["Arguments"] for j in jobs][:2] == ["00", "01"]
    assert jobs[-1]["Arguments"] == "10"
    assert jobs[-1]["ParameterNumber"] == 10


def test_substitution_is_one_pass():
    jobs = expand_parametric({"Arguments": "%s-%n", "Parameters": ["%n", "%s", "true"]}, max_jobs=3)
    assert [j["Arguments"] for j in jobs] == ["%n-0", "%s-1", "true-2"]


def test_boolean_parameters_are_written_as_the_jdl_writes_them():
    jobs = expand_parametric({"Arguments": "--flag=%s", "Parameters": [True, False]}, max_jobs=2)
    assert [j["Arguments"] for j in jobs] == ["--flag=true", "--flag=false"]
    assert [j["Parameter"] for j in jobs] == [True, False]


def test_the_job_id_is_substituted_after_insertion():
    attrs = {"StdOutput": "out_%j", "OutputSandbox": ["out_%j", "x"], "R": Expression("id == %j"), "N": 3}
    result = substitute_job_id(attrs, 1234)
    assert result == {
        "StdOutput": "out_1234", "OutputSandbox": ["out_1234", "x"], "R": Expression("id == 1234"), "N": 3
    }
    assert attrs["OutputSandbox"] == ["out_%j", "x"]  # the input is left alone


@pytest.mark.parametrize(
    "settings, count, max_jobs",
    [
        ("Parameters = 1000000000;", 1000000000, 1000),
        ('Parameters = {"a", "b", "c", "d", "e"};', 5, 4),
    ],
)
def test_the_cap_is_checked_before_anything_is_made(settings, count, max_jobs):
    started = time.process_time()
    with pytest.raises(QuotaExceeded) as e:
        expand_parametric(parse('Executable = "x";' + settings), max_jobs=max_jobs)
    assert str(e.value) == f"parametric job would make {count} jobs, over the cap of {max_jobs}"
    assert time.process_time() - started < 0.5


def test_exactly_the_cap_is_allowed():
    assert len(expand_parametric({"Parameters": 4}, max_jobs=4)) == 4
    assert parameter_vector_length({"parameters": ["a", "b"]}) == 2


@pytest.mark.parametrize(
    "settings, message",
    [
        ("Parameters = 0;", "Parameters must be a list or a positive integer, got 0"),
        ("Parameters = -3;", "Parameters must be a list or a positive integer, got -3"),
        ("Parameters = 2.5;", "Parameters must be a list or a positive integer, got 2.5"),
        ('Parameters = "many";', 'Parameters must be a list or a positive integer, got "many"'),
        ("Parameters = {};", "Parameters is an empty list"),
        ('Parameters = {{"a"}, {"b"}};', 'Parameters must hold strings or numbers, got {"a"}'),
        ('Parameters = {"a"}; ParameterStep = 1;', "ParameterStep applies only when Parameters is a number"),
        ('Parameters = 2; ParameterStep = "x";', 'ParameterStep must be a number, got "x"'),
        ("Parameters = 2; ParameterFactor = other.X;", "ParameterFactor must be a number, got other.X"),
        ("Parameters = 2; Parameter = 1;", "Parameter is set by the parametric expansion, not by the JDL"),
        ("Parameters = 30; ParameterStart = 1; ParameterFactor = 10;",
         "parameter number 19 is out of range (2**63)"),
    ],
)
def test_bad_parametric_descriptions_are_refused(settings, message):
    with pytest.raises(InvalidJDL) as e:
        expand_parametric(parse('Executable = "x";' + settings), max_jobs=100)
    assert str(e.value) == message


def test_expanded_jobs_write_and_read_back():
    for job in expand_parametric(parse(EXAMPLE), max_jobs=3):
        assert parse(dumps(job)) == job


# ---------------------------------------------------------------- defensive

def _big_jdl() -> str:
    files = ",\n".join(f'    "data/run_{i:06d}/input file.root"' for i in range(30_000))
    return f'[\n  Executable = "x";\n  InputSandbox = {{\n{files}\n  }};\n  Note = "{"y" * 100_000}";\n]'


@pytest.mark.parametrize(
    "text, check",
    [
        (_big_jdl(), lambda a: len(a["InputSandbox"]) == 30_000 and len(a["Note"]) == 100_000),
        ("A = " + "a && " * 200_000 + "b;", lambda a: a["A"].text.endswith("a && b")),  # one long expression
        ('A = "' + "\\\\" * 250_000 + '\\"' * 250_000 + '";',  # many escapes
         lambda a: a["A"] == "\\" * 250_000 + '"' * 250_000),
        ("# " + "x" * 1_000_000 + "\nA = 1;", lambda a: a == {"A": 1}),  # one long comment
    ],
    ids=["big-sandbox", "long-expression", "escapes", "long-comment"],
)
def test_a_megabyte_parses_quickly(text, check):
    assert len(text) > 900_000
    started = time.process_time()
    attrs = parse(text)
    assert time.process_time() - started < 5.0  # CPU seconds; quadratic would take minutes
    assert check(attrs)


@pytest.mark.parametrize(
    "text, message",
    [
        ('A = "' + "x" * 1_000_000, "line 1: unterminated string"),
        ("A = 1; /*" + " * /" * 250_000, "line 1: unterminated comment"),
        ("A = " + "{" * 500_000, f"line 1: nesting deeper than {MAX_DEPTH} levels"),
        ("".join(f"A{i} = 1;\n" for i in range(80_000)) + "a0 = 2;", "line 80001: duplicate attribute a0"),
    ],
    ids=["open-string", "open-comment", "deep", "many-duplicates"],
)
def test_hostile_megabytes_fail_quickly(text, message):
    started = time.process_time()
    assert fails(text) == message
    assert time.process_time() - started < 5.0  # CPU seconds; quadratic would take minutes
