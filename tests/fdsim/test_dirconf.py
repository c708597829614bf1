r"""What the director makes of plugin strings (reference §1.1, §12): bareos-dir.conf's lexer
(lib/lex.cc LexGetToken, quoted strings) and bconsole's argument splitter (lib/scan.cc next_arg).

Measured on a real 25.1 director: a FileSet ``Plugin = "...:host_map=HV01=...\:59155"`` reached the
fd as ``...:59155`` and the job failed with ``python3-fd: Illegal argument 59155 without value``;
``\\:`` in the file is what delivers ``\:``.
"""

from __future__ import annotations

import pytest

from fdsim import fd as fdmod
from fdsim.dirconf import ConfigSyntaxError, bconsole_args, bconsole_pluginoptions, fileset_plugin_strings
from fdsim.pyfiles import bareosfd as bfd

from .conftest import Env


def _one(conf: str) -> str:
    (value,) = fileset_plugin_strings(conf)
    return value


@pytest.mark.parametrize(("written", "received"), [
    (r'Plugin = "python3:module_name=m:a=1"', "python3:module_name=m:a=1"),
    # a backslash escapes the next character and is dropped
    (r'Plugin = "python3:host_map=HV01=10.0.0.5\:5985"', "python3:host_map=HV01=10.0.0.5:5985"),
    (r'Plugin = "python3:host_map=HV01=10.0.0.5\\:5985"', r"python3:host_map=HV01=10.0.0.5\:5985"),
    (r'Plugin = "python3:staging_path=C:\VMs\stage"', "python3:staging_path=C:VMsstage"),
    (r'Plugin = "python3:share_map=C:\\CSV=\\\\fs\\csv"', r"python3:share_map=C:\CSV=\\fs\csv"),
    (r'Plugin = "say \"hi\""', 'say "hi"'),
    # '#' inside quotes is no comment; '$' and '/' are plain characters
    ('Plugin = "python3:host_map=HV01=10.0.0.5#5985:path=C$/VMs"', "python3:host_map=HV01=10.0.0.5#5985:path=C$/VMs"),
    # adjacent quoted strings are joined, on one line or across lines
    ('Plugin = "python3" ":module_name=m" ":a=1"', "python3:module_name=m:a=1"),
    ('Plugin = "python3:module_name=m"\n         ":a=1"\n\t":b=2"', "python3:module_name=m:a=1:b=2"),
    # a line break inside the quotes is dropped
    ('Plugin = "python3:module_name=m:\na=1"', "python3:module_name=m:a=1"),
    # keywords: case and blanks do not matter
    ('  plug in="python3:x=1"  # a comment "not a string"', "python3:x=1"),
])
def test_quoted_plugin_strings(written: str, received: str) -> None:
    assert _one(written) == received


def test_a_whole_fileset_resource_with_comments_and_options() -> None:
    conf = '''
    # Plugin = "commented out"
    FileSet {
      Name = "hyperv-web01"   # the FileSet's name
      Include {
        Options { Signature = XXH128; Compression = LZ4 }
        Plugin = "python3:module_name=bareos-fd-hyperv:host=hv-cluster01:vm=web01"
        Plugin = "python3:module_name=bareos-fd-hyperv:host=hv-cluster01:vm=db01"
      }
    }
    '''
    assert fileset_plugin_strings(conf) == ["python3:module_name=bareos-fd-hyperv:host=hv-cluster01:vm=web01",
                                            "python3:module_name=bareos-fd-hyperv:host=hv-cluster01:vm=db01"]


@pytest.mark.parametrize(("conf", "fragment"), [
    ("Plugin = python3:module_name=m", "unquoted Plugin value"),
    ('Include { Options { Plugin = "python3:x=1" } }', "Options-block plugin"),
    ('Plugin = "|/usr/local/bin/make-lines"', "not modelled"),
    ('Plugin = "python3:x=1', "a double quote is missing"),
])
def test_what_the_director_would_refuse_or_misread(conf: str, fragment: str) -> None:
    with pytest.raises(ConfigSyntaxError, match=fragment):
        fileset_plugin_strings(conf)


def test_bconsole_arguments() -> None:
    cmd = (r'restore client=fd01 fileset="hyperv web01" where=/ select current all done '
           r'pluginoptions="python3:restore_storage=C\:\VMs:restore_node=HV02" yes')
    args = bconsole_args(cmd)
    assert args[:3] == [("restore", None), ("client", "fd01"), ("fileset", "hyperv web01")]
    assert ("where", "/") in args and args[-1] == ("yes", None)
    # next_arg drops every backslash (inside quotes too): the colon and the path separator are gone
    assert bconsole_pluginoptions(cmd) == "python3:restore_storage=C:VMs:restore_node=HV02"
    assert bconsole_pluginoptions(r"run job=x pluginoptions=python3:a=b\\:c yes") == r"python3:a=b\:c"
    with pytest.raises(ConfigSyntaxError):
        bconsole_pluginoptions("restore where=/ yes")


def test_escaped_colon_in_the_director_file_reaches_the_fd_bare_and_fails_the_job(env: Env) -> None:
    env.write_spec([{"name": "/@d/a", "size": 3}])
    conf = f'''FileSet {{ Name = "t"
      Include {{ Plugin = "python3:module_name=bareos-fd-testfiles:spec={env.spec}:log={env.logfile}"
                          ":tag=HV01=127.0.0.1\\:59155" }} }}'''
    r = env.sim.backup_fileset(conf, plugin_dir=env.plugin_dir)
    assert r.status == "f", r.log()
    # python-fd.cc parse_plugin_definition: the last item has no '=' left after the bare ':'
    assert r.texts(bfd.M_FATAL)[0] == "python3-fd: Illegal argument 59155 without value\n"
    assert r.texts(bfd.M_FATAL)[1:] == [fdmod.SD_AUTH_CANCELED, fdmod.SD_AUTH_FAILED, fdmod.DIR_BAD_STORAGE]
    assert env.log_of("init") == []  # the module was never loaded

    doubled = conf.replace("\\:59155", "\\\\:59155")
    r = env.sim.backup_fileset(doubled, plugin_dir=env.plugin_dir)
    assert r.status == "T", r.log()
    assert env.log_of("parse")[-1]["options"]["tag"] == "HV01=127.0.0.1:59155"  # the base class unescapes
